"""The knowledge-base file as the monitor reads it: the admin area offers and checks the entries of
the base in force (KB_PATH, the same file the workers serve, on the monitor's disk or ConfigMap)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from services.worker.engines.kbfile import KnowledgeBase


@dataclass(slots=True)
class BaseFile:
    """The knowledge-base file as the monitor last read it, re-read when its size or mtime change."""

    path: Path
    _read: tuple[tuple[int, int], KnowledgeBase] | None = field(default=None, init=False)

    async def knowledge(self) -> KnowledgeBase:
        """Raises KnowledgeBaseError or OSError naming the problem."""
        info = self.path.stat()
        stat = (info.st_size, info.st_mtime_ns)
        if self._read is None or self._read[0] != stat:
            self._read = (stat, await asyncio.to_thread(KnowledgeBase.load, self.path))
        return self._read[1]
