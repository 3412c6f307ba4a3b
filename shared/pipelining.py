"""Automatic pipelining: Redis commands issued while a round trip is on the wire share the next one.

Under load the gateway issues the same few commands (a claim, an accept, a rate-limit take) for
many requests at once. Sent one by one, each costs a write, a read and a wake-up on both sides;
here the commands of every request that is waiting go out together in one pipeline, so the cost
per command falls as the load rises, and an idle service pays one tick of the event loop at most.

Each command still gets its own reply or its own error: one command's failure is not the others'.
A pipeline that cannot be sent fails every command in it (a connection error is "Redis
unavailable" for each caller). Only commands that are safe to send twice go through here: redis-py
resends a pipeline whose reply was lost, like it resends a single command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Command = tuple[str | int | float | bytes, ...]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script run by EVALSHA (its text crosses the wire once, or again after a Redis restart)."""

    text: str
    sha: str

    @classmethod
    def of(cls, redis: Redis, text: str) -> Script:
        return cls(text, redis.register_script(text).sha)


@dataclass(slots=True)
class AutoPipeline:
    redis: Redis
    _pending: list[tuple[Command, asyncio.Future[Any]]] = field(default_factory=list)
    _flushing: asyncio.Task[None] | None = None

    async def execute(self, *command: str | int | float | bytes) -> Any:
        """Run one command in the next round trip; its reply, or its error raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="redis-autopipeline")
        return await future

    async def run(self, script: Script, keys: list[str], args: list[str | int | float]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or flushed its scripts: load it again and run it once more.
            await self.redis.script_load(script.text)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    replies = await self._send([command for command, _ in batch])
                except Exception as exc:  # the pipeline was not answered: every caller learns why
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue  # its caller gave up (cancelled)
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._flushing = None

    async def _send(self, commands: list[Command]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)
