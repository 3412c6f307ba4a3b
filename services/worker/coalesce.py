"""Many lanes, one call: requests that arrive while a batch is being worked on go in the next.

The worker's lanes each want a round trip of their own (a commit, a question embedded by the
model); `Coalescer` hands them to one call of `work` per batch instead, so the lanes waiting at
any moment share it. Every waiter gets its own result, or the batch's exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, work: Callable[[list[T]], Awaitable[Sequence[R]]], name: str) -> None:
        self._work = work
        self._name = name
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain(), name=self._name)
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._work([item for item, _ in batch])
                except Exception as exc:  # every waiter learns it (the dependency's errors, and bugs alike)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = None
