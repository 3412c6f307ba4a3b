"""A TCP proxy that does harm on demand, between a service and Redis or RabbitMQ.

Point the service's REDIS_URL or AMQP_URL at `FaultProxy.port`; the proxy forwards both ways until
a test asks it to:
  * `swallow(UP)` / `swallow(DOWN)`: drop what one side sends while keeping the connection open
    (the sender sees no error; its frames never arrive: a broker that "hangs" for this client only);
  * `cut_after_sent(pattern)`: forward the chunk where the client sends `pattern`, then cut the
    connection before the server's answer comes back (a reply lost on the wire);
  * `cut_after(UP, n)`: cut once `n` more bytes went up;
  * `drop()`: cut every open connection (new ones are accepted);
  * `resume()`: forward everything again (connections cut stay cut);
  * `close()` / `start()` again: the server unreachable (connections refused), then back.
The servers themselves are never touched: other clients of the shared ones see nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field

from tests.support import free_port


class Direction(enum.Enum):
    UP = "client to server"
    DOWN = "server to client"


UP, DOWN = Direction.UP, Direction.DOWN


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    deaf: bool = False  # the server's answers are lost from now on

    def cut(self) -> None:
        self.client.transport.abort()
        self.server.transport.abort()


@dataclass
class _Trigger:
    pattern: bytes = b""
    budget: int = -1  # bytes left before the cut; -1: no byte budget
    fired: asyncio.Event = field(default_factory=asyncio.Event)


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._swallowing: set[Direction] = set()
        self._triggers: dict[Direction, _Trigger] = {}
        self.swallowed = {UP: 0, DOWN: 0}

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def url(self, scheme: str, suffix: str = "") -> str:
        return f"{scheme}127.0.0.1:{self.port}{suffix}"

    def swallow(self, direction: Direction) -> None:
        self._swallowing.add(direction)

    def resume(self) -> None:
        self._swallowing.clear()
        self._triggers.clear()

    def drop(self) -> None:
        for link in list(self._links):
            link.cut()
        self._links.clear()

    def cut_after_sent(self, pattern: bytes) -> asyncio.Event:
        """Cut the connection whose client sends `pattern`, right after forwarding it, so that
        the server acts on it but its answer is lost. Fires once; the event tells it fired."""
        trigger = _Trigger(pattern=pattern)
        self._triggers[UP] = trigger
        return trigger.fired

    def cut_after(self, direction: Direction, n_bytes: int) -> asyncio.Event:
        trigger = _Trigger(budget=n_bytes)
        self._triggers[direction] = trigger
        return trigger.fired

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, server_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(link, reader, server_writer, UP),
                self._pipe(link, server_reader, writer, DOWN),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)
            link.cut()

    async def _pipe(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        try:
            while data := await reader.read(65536):
                if direction in self._swallowing or (direction is DOWN and link.deaf):
                    self.swallowed[direction] += len(data)
                    continue
                trigger = self._triggers.get(direction)
                if trigger is not None and self._fires(trigger, data):
                    link.deaf = True
                    writer.write(data[: trigger.budget] if trigger.budget >= 0 else data)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    # Let the server read it before the cut, then lose whatever it answers.
                    await asyncio.sleep(0.05)
                    del self._triggers[direction]
                    trigger.fired.set()
                    link.cut()
                    return
                if trigger is not None and trigger.budget >= 0:
                    trigger.budget -= len(data)
                writer.write(data)
                await writer.drain()
        finally:
            link.cut()

    @staticmethod
    def _fires(trigger: _Trigger, data: bytes) -> bool:
        if trigger.pattern:
            return trigger.pattern in data
        return 0 <= trigger.budget <= len(data)
