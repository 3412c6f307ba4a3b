"""Errors counted from the gateway's request paths, in the background."""

from __future__ import annotations

import asyncio
import contextlib

from shared.store import REDIS_ERRORS, Store


class BackgroundErrors:
    """Counts errors from a request path without making the answer wait on Redis (which may be
    the very thing that failed): each count is a background task, and they never pile up."""

    MAX_PENDING = 100

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, kind: str) -> None:
        if len(self._pending) >= self.MAX_PENDING:
            return
        task = asyncio.create_task(self._record(kind))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, kind: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._store.record_error(kind)
