"""A benchmark's working directory: where its services write their logs (and the soak its private
Redis its data). Some 20 MB a `make bench`: removed when the run ends, so that repeated runs do not
fill the disk, unless the run failed or the caller keeps it (`--keep-logs`), and then named on
stderr for a look at what the services said."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType


class Workdir:
    def __init__(self, name: str, *, keep: bool = False) -> None:
        self.name = name
        self.path = Path()
        self._keep = keep

    def keep(self) -> None:
        """Keep the directory after the run (a run that went wrong without raising)."""
        self._keep = True

    def __enter__(self) -> Workdir:
        self.path = Path(tempfile.mkdtemp(prefix=f"atendimento-{self.name}-"))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._keep or kind is not None:
            print(f"{self.name}: the services' logs are in {self.path}", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
