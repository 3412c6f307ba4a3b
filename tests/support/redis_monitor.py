"""The commands Redis runs for one namespace, watched with MONITOR while a test drives the stack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from tests.support import REDIS_URL


class Commands:
    """The commands Redis runs for one namespace (MONITOR), as "GET key" strings, Lua's aside."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.seen: list[str] = []
        self.ready = asyncio.Event()

    async def watch(self) -> None:
        client = Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            async with client.monitor() as monitor:
                self.ready.set()
                while True:
                    info = await monitor.next_command()
                    if self.namespace in info["command"] and info.get("client_type") != "lua":
                        self.seen.append(info["command"])
        finally:
            await client.aclose()

    def reads_of(self, key: str) -> list[str]:
        return [c for c in self.seen if c.split(" ")[0] in {"GET", "LRANGE", "EXISTS"} and key in c]


@contextlib.asynccontextmanager
async def monitoring(namespace: str) -> AsyncIterator[Commands]:
    commands = Commands(namespace)
    task = asyncio.create_task(commands.watch())
    try:
        await asyncio.wait_for(commands.ready.wait(), 5)
        yield commands
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
