"""Slow and greedy clients at the listener: open connections capped per client address, and the
server's own deadlines (issue 26).

Idle or half-sent connections cost a file handle each; without a cap one address could hold them
all (`Too many open files`, and then nothing works, heartbeats included). `GuardedSite` is a TCP
site whose connections are counted per peer address: one over `MAX_CONNECTIONS_PER_IP` is
answered a 429 at once and closed, before aiohttp sees it. Trusted proxies (`TRUSTED_PROXIES`) are
exempt: every client behind them shares their address, and the proxy caps its own clients
(deploy/nginx). Each admitted connection gets the request-head deadline (`EdgeLimits`); body
deadlines are the handlers' (services/gateway/bodies.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import orjson
from aiohttp import web
from aiohttp.http import HttpProcessingError

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
# After an early answer (a 413 from Content-Length), how long the rest of an unread body is drained
# so the client reads the answer rather than a reset (aiohttp's default, 10 s, holds the handle).
LINGER_S = 2.0
# How long a trusted proxy's idle connection stays open: longer than the proxies keep theirs to us.
PROXY_IDLE_S = 75.0
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


@dataclass(slots=True)
class ConnectionCounts:
    """Open connections per peer address, against a cap (0: no cap); trusted proxies uncounted."""

    cap: int
    trusted: Networks = ()
    open: dict[str, int] = field(default_factory=dict)
    refused: int = 0

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def admit(self, address: str) -> bool:
        if not self.cap or self.trusts(address):
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


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    counts: ConnectionCounts
    # A request head must arrive within this, the first one and each one after (between them the
    # connection is idle). aiohttp's keep-alive timeout does exactly that: it closes a connection
    # that has not completed a head in time, the first one included.
    header_timeout_s: float


class _Counted(asyncio.Protocol):
    """aiohttp's protocol behind a door: a connection over its address's cap never reaches it;
    the others get the head deadline, except a trusted proxy's, which pools its connections to us
    idle for up to a minute (nginx and ingress-nginx: 60 s) and must find them open."""

    def __init__(self, server: web.Server, limits: EdgeLimits, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._limits = limits
        self._loop = loop
        self._address = ""
        self._inner: web.RequestHandler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        counts = self._limits.counts
        if not counts.admit(self._address):
            writer = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
            writer.write(TOO_MANY_CONNECTIONS)
            writer.close()  # after the answer is flushed
            return
        deadline = PROXY_IDLE_S if counts.trusts(self._address) else self._limits.header_timeout_s
        self._inner = web.RequestHandler(
            self._server,
            loop=self._loop,
            access_log=None,  # type: ignore[arg-type]  # aiohttp's documented "no access log"
            keepalive_timeout=deadline,
            lingering_time=LINGER_S,
        )
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limits.counts.release(self._address)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site, with each connection counted against its address's cap and given the
    head deadline."""

    __slots__ = ("_host", "_limits", "_port")

    def __init__(self, runner: web.BaseRunner, port: int, limits: EdgeLimits, host: str | None = None) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._limits = limits

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Counted(server, self._limits, loop), self._host, self._port)


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
