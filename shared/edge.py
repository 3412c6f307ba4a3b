"""Slow and greedy clients at the listener: open connections capped per client address, and the
server's own deadlines (issue 26).

Idle or half-sent connections cost a file handle each; without a cap one address could hold them
all (`Too many open files`, and then nothing works, heartbeats included). `GuardedSite` is a TCP
site whose connections are counted per peer address: one over `MAX_CONNECTIONS_PER_IP` is
answered a 429 at once and closed, before aiohttp sees it. Trusted proxies (`TRUSTED_PROXIES`) are
exempt: every client behind them shares their address, and the proxy caps its own clients
(deploy/nginx). The request-head deadline is aiohttp's keep-alive timeout, which closes a
connection that has not completed a request head in time, the first one included
(`server_options`); body deadlines are the handlers' (services/gateway/bodies.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http import HttpProcessingError

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
# After an early answer (a 413 from Content-Length), how long the rest of an unread body is drained
# so the client reads the answer rather than a reset (aiohttp's default, 10 s, holds the handle).
LINGER_S = 2.0
TOO_MANY_DETAIL = "client address: too many open connections from this address (MAX_CONNECTIONS_PER_IP)"


def _too_many_connections() -> bytes:
    body = orjson.dumps({"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": TOO_MANY_DETAIL})
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\nRetry-After: 1\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


TOO_MANY_CONNECTIONS = _too_many_connections()


def raise_file_limit() -> int:
    """Open-file limit: the soft one up to the hard one (containers often start at 1,024 of a hard
    1,048,576; Kubernetes has no setting for it). The number the process may now hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # an unlimited hard limit the kernel will not grant: the soft one stands
    return soft


def server_options(header_timeout_s: float) -> dict[str, Any]:
    """aiohttp's server settings for hostile clients: a connection with no complete request head
    within the deadline (idle, or sending it byte by byte) is closed; an unread body is drained
    briefly after an early answer."""
    return {"keepalive_timeout": header_timeout_s, "lingering_time": LINGER_S}


@dataclass(slots=True)
class ConnectionCounts:
    """Open connections per peer address, against a cap (0: no cap)."""

    cap: int
    trusted: Networks = ()
    open: dict[str, int] = field(default_factory=dict)
    refused: int = 0

    def admit(self, address: str) -> bool:
        if not self.cap or _is_trusted(address, self.trusted):
            return True
        count = self.open.get(address, 0)
        if count >= self.cap:
            self.refused += 1
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)


def _is_trusted(address: str, trusted: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol behind a door: a connection over its address's cap never reaches it."""

    def __init__(self, inner: asyncio.Protocol, counts: ConnectionCounts) -> None:
        self._inner = inner
        self._counts = counts
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._counts.admit(address):
            writer = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
            writer.write(TOO_MANY_CONNECTIONS)
            writer.close()  # after the answer is flushed
            return
        self._address = address
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            self._counts.release(self._address)
            self._address = None
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._address is not None else None

    def pause_writing(self) -> None:
        if self._address is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._address is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site, with each connection counted against its address's cap."""

    __slots__ = ("_counts", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, port: int, counts: ConnectionCounts, host: str | None = None) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._counts = counts

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = lambda: _Counted(server(), self._counts)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_server(factory, self._host, self._port)


class MalformedRequests(logging.Filter):
    """aiohttp refuses malformed HTTP (a head it cannot parse, both Content-Length and
    Transfer-Encoding, ...) with a 400, then logs it at ERROR with a traceback: anyone could fill
    the error log. Rewritten here to one WARNING line naming the client and the fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed HTTP request from %s refused (400): %s"
            record.args = (remote, exc.message)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, MalformedRequests) for existing in server_log.filters):
        server_log.addFilter(MalformedRequests())
