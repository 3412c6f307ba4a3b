"""Automatic pipelining: Redis commands issued while a round trip is on the wire share the next one.

Under load the gateway issues the same few commands (a message's rate limits and claim in one
script call, its accept) for many requests at once. Sent one by one, each costs a write, a read and
a wake-up on both sides; here the commands of every request that is waiting go out together in one pipeline, so the cost
per command falls as the load rises, and an idle service pays one tick of the event loop at most.

Commands nobody waits for (`later`: the accept that makes a queued message's claim final) ride in
the next round trip that leaves anyway, or after LATER_S at most; their errors are logged.

Each command still gets its own reply or its own error: one command's failure is not the others'.
A pipeline that cannot be sent fails every command in it (a connection error is "Redis
unavailable" for each caller). Only commands that are safe to send twice go through here: redis-py
resends a pipeline whose reply was lost, like it resends a single command.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

log = logging.getLogger(__name__)

Command = tuple[str | int | float | bytes, ...]
# The longest a `later` command waits for a round trip to share.
LATER_S = 0.02


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
    _pending: list[tuple[Command, asyncio.Future[Any] | None]] = field(default_factory=list)
    _flushing: asyncio.Task[None] | None = None
    _later: list[Command] = field(default_factory=list)
    _lingering: asyncio.TimerHandle | None = None

    async def execute(self, *command: str | int | float | bytes) -> Any:
        """Run one command in the next round trip; its reply, or its error raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
        self._start_flush()
        return await future

    async def run(self, script: Script, keys: list[str], args: list[str | int | float]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or flushed its scripts: load it again and run it once more.
            await self.redis.script_load(script.text)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def later(self, *command: str | int | float | bytes) -> None:
        """Send a command with the next round trip, or within LATER_S; nobody waits for it."""
        self._later.append(command)
        if self._lingering is None:
            self._lingering = asyncio.get_running_loop().call_later(LATER_S, self._send_later)

    async def drain(self) -> None:
        """Send what is left (at shutdown, before the connection closes)."""
        self._send_later()
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    def _send_later(self) -> None:
        self._pending[:0] = [(command, None) for command in self._take_later()]
        self._start_flush()

    def _take_later(self) -> list[Command]:
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        later, self._later = self._later, []
        return later

    def _start_flush(self) -> None:
        if self._flushing is None and self._pending:
            self._flushing = asyncio.create_task(self._flush(), name="redis-autopipeline")

    async def _flush(self) -> None:
        try:
            while self._pending:
                # The commands nobody waits for go along with those somebody does (first: they
                # were issued earlier, and a retried claim must find its message's accept).
                batch = [(command, None) for command in self._take_later()] + self._pending
                self._pending = []
                try:
                    replies = await self._send([command for command, _ in batch])
                except Exception as exc:  # the pipeline was not answered: every caller learns why
                    replies = [exc] * len(batch)
                for (command, future), reply in zip(batch, replies, strict=True):
                    _answer(command, future, reply)
        finally:
            self._flushing = None

    async def _send(self, commands: list[Command]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)


def _answer(command: Command, future: asyncio.Future[Any] | None, reply: Any) -> None:
    if future is None:
        if isinstance(reply, Exception):
            # For the gateway's accepts: the claim stays provisional, which a retry copes with.
            log.warning("Redis command %s not applied: %r", " ".join(map(str, command[:2])), reply)
    elif future.done():
        pass  # its caller gave up (cancelled)
    elif isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
