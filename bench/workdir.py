"""A benchmark's working directory: where its services write their logs (and the soak its private
Redis its data). Some 20 MB a `make bench`: removed when the run ends, so that repeated runs do not
fill the disk, unless the run failed or the caller keeps it (`--keep-logs`), and then named on
stderr for a look at what the services said."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Workdir:
    path: Path
    kept: bool = False

    def keep(self) -> None:
        """Keep the directory after the run (a run that went wrong without raising)."""
        self.kept = True


@contextlib.contextmanager
def working_dir(name: str, *, keep: bool = False) -> Iterator[Workdir]:
    workdir = Workdir(Path(tempfile.mkdtemp(prefix=f"atendimento-{name}-")), kept=keep)
    try:
        yield workdir
    except BaseException:
        workdir.keep()
        raise
    finally:
        if workdir.kept:
            print(f"{name}: the services' logs are in {workdir.path}", file=sys.stderr)
        else:
            shutil.rmtree(workdir.path, ignore_errors=True)
