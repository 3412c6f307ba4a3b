"""Test support: real service processes on free ports, each test in a namespace of its own.

Helpers shared by several test modules live in this package (tests/test_layout.py checks that no
test module imports another)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from services.gateway.web_conversations import ConversationTokens, scoped, user_scope
from shared.messages import InboundMessage
from shared.names import Names

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PT = ROOT / "shared" / "data" / "kb-sample.yaml"
PRAZO = "Qual o prazo de entrega?"  # a question the sample base answers
VECTOR_CACHE = Path(tempfile.gettempdir()) / "atendimento-test-vectors"
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_PORT = int(AMQP_URL.rsplit(":", 1)[1].split("/")[0])
REDIS_PORT = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
TEST_SHARDS = 4
# Debian's (scripts/ensure-test-tools.sh), for the browser tests: the headless shell, which renders
# with the whole browser's engine for half its CPU.
CHROMIUM = "/usr/bin/chromium-headless-shell"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # fewer quorum queues per test namespace: the broker is shared by the whole suite

T = TypeVar("T")


class _PortBlock:
    """Ports for the services and servers a test starts. Not the kernel's pick (`bind(0)`): that
    comes from the ephemeral range, where every outgoing connection takes its own local port too,
    and the other pytest-xdist process picks from the same range, so a port could be taken between
    the pick and the service's bind. Instead each test process walks a block of its own below the
    ephemeral range (Linux's default starts at 32768), skipping ports something holds."""

    FIRST, SIZE, BLOCKS = 20_000, 1_500, 8

    def __init__(self, worker: str) -> None:
        index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
        self._start = self.FIRST + (index % self.BLOCKS) * self.SIZE
        self._next = random.randrange(self.SIZE)  # a rerun does not start on ports just let go

    def take(self) -> int:
        for _ in range(self.SIZE):
            port = self._start + self._next
            self._next = (self._next + 1) % self.SIZE
            with socket.socket() as sock:
                try:
                    sock.bind(("0.0.0.0", port))  # what the services bind
                except OSError:
                    continue
            return port
        raise RuntimeError(f"no free port in {self._start}-{self._start + self.SIZE - 1}")


_PORTS = _PortBlock(os.environ.get("PYTEST_XDIST_WORKER", ""))


def free_port() -> int:
    return _PORTS.take()


def new_namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def sse_events(
    response: aiohttp.ClientResponse, connected: asyncio.Event | None = None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) for each event of a server-sent stream; `connected` is set at the
    stream's first comment line (the gateway has subscribed it)."""
    event, data = "", b""
    async for raw in response.content:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b": connected") and connected is not None:
            connected.set()
        elif line.startswith(b"event: "):
            event = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:]
        elif not line and data:
            yield event, orjson.loads(data)
            event, data = "", b""


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll until `probe` returns something truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = await probe()
            if result:
                return result
        except (aiohttp.ClientError, OSError, AssertionError) as exc:
            last_error = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_error!r}")


@dataclass
class Service:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_live(self, timeout: float = 60.0) -> None:
        """A worker embeds its base at start (the multilingual model): on a busy machine that takes
        a while the first time; the vectors are then shared by every test (KB_CACHE_DIR)."""
        async with aiohttp.ClientSession() as http:

            async def live() -> bool:
                assert self.process is not None and self.process.poll() is None, self.logs()
                async with http.get(self.url + "/monitoring/live") as response:
                    return response.status == 200

            await eventually(live, timeout=timeout, what=f"{self.name} to answer /monitoring/live")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    """Gateway(s), worker(s) and monitor of one namespace, as real processes."""

    namespace: str
    tmp: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ATENDIMENTO_", "OTEL_", "GATEWAY_", "WORKER_", "MONITOR_"))
        }
        base.update(
            {
                "AMQP_URL": AMQP_URL,
                "REDIS_URL": REDIS_URL,
                "ATENDIMENTO_NAMESPACE": self.namespace,
                "ATENDIMENTO_SHARDS": str(TEST_SHARDS),
                "HEARTBEAT_INTERVAL_SECONDS": "0.5",
                # Statistics land within this; tests that read them poll (`eventually`).
                "STATS_FLUSH_INTERVAL_SECONDS": "0.1",
                # Tests flood single users on purpose; the rate-limit tests turn the limits on.
                "RATE_LIMIT_PER_USER": "0",
                "RATE_LIMIT_PER_IP": "0",
                "DRAIN_SECONDS": "0",
                "OTEL_SDK_DISABLED": "true",
                # Every test's worker embeds the same bases: once for the whole run.
                "KB_CACHE_DIR": str(VECTOR_CACHE),
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(self.extra_env)
        base.update(overrides)
        return base

    async def start(self, name: str, **overrides: str) -> Service:
        port = free_port()
        port_var = {"gateway": "GATEWAY_PORT", "worker": "WORKER_PORT", "monitor": "MONITOR_PORT"}[name]
        index = sum(1 for s in self.services if s.name == name)
        service = Service(name, port, self.env(**{port_var: str(port), **overrides}), self.tmp / f"{name}-{index}.log")
        service.start()
        self.services.append(service)
        await service.wait_live()
        return service

    def of(self, name: str) -> list[Service]:
        return [s for s in self.services if s.name == name and s.process and s.process.poll() is None]

    @property
    def gateway(self) -> Service:
        return self.of("gateway")[0]

    @property
    def monitor(self) -> Service:
        return self.of("monitor")[0]

    def stop_all(self) -> None:
        """Every service told to stop at once, then each waited for: their stops overlap."""
        for service in self.services:
            service.kill(signal.SIGTERM)
        for service in self.services:
            service.stop()

    def logs(self) -> str:
        return "\n".join(f"==== {s.name} ({s.log_path.name})\n{s.logs()[-4000:]}" for s in self.services)


async def purge_namespace(namespace: str, shards: int = TEST_SHARDS) -> None:
    """Delete what a test namespace left on the shared broker and Redis."""
    redis = Redis.from_url(REDIS_URL)
    try:
        async for key in redis.scan_iter(match=f"{namespace}:*", count=1000):
            await redis.delete(key)
    finally:
        await redis.aclose()
    connection = await aio_pika.connect(AMQP_URL)
    try:
        names = [f"{namespace}.inbound.{i}" for i in range(shards)] + [
            f"{namespace}.dead-letters",
            f"{namespace}.delivery.whatsapp",
            f"{namespace}.delivery.telegram",
        ]
        for name in names:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except aio_pika.exceptions.AMQPError:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
        channel = await connection.channel()
        for exchange in ("inbound", "replies", "dead"):
            await channel.exchange_delete(f"{namespace}.{exchange}")
    finally:
        await connection.close()


async def post_message(
    http: aiohttp.ClientSession, gateway: Service, body: Mapping[str, Any], wait: float = 0
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{gateway.url}/v1/messages", params={"wait": str(wait)}, json=body) as response:
        return response.status, await response.json(content_type=None)


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as response:
        return response.status, await response.json(content_type=None)


async def stats_when(
    http: aiohttp.ClientSession, monitor: Service, ready: Callable[[dict[str, Any]], bool], *, path: str = ""
) -> dict[str, Any]:
    """/monitoring/stats (or `path` under it, "/24h") once `ready` holds: statistics reach Redis
    with each process's next flush (STATS_FLUSH_INTERVAL_SECONDS), so they are polled, not read once."""

    async def probe() -> dict[str, Any] | None:
        _, body = await get_json(http, f"{monitor.url}/monitoring/stats{path}")
        return body if ready(body) else None

    return await eventually(probe, timeout=20, what=f"/monitoring/stats{path} to show the counts")


def web_id(user_id: str, public_id: str) -> str:
    """The id a web caller's conversation (or message) id has inside the system (Redis keys)."""
    return scoped(user_scope(user_id), public_id)


async def conversation_token(namespace: str, user_id: str, conversation_id: str) -> str:
    """The token the gateways of `namespace` issue for a web conversation, minted by the same code
    with the same shared secret, for tests that must listen before their first message."""
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return await ConversationTokens(redis, Names(namespace, TEST_SHARDS)).issue(web_id(user_id, conversation_id))
    finally:
        await redis.aclose()


async def stored_reply(namespace: str, message_id: str) -> dict[str, Any] | None:
    """The reply a worker stored for a message (any channel), read from Redis."""
    redis = Redis.from_url(REDIS_URL)
    try:
        raw = await redis.get(Names(namespace, TEST_SHARDS).reply_key(message_id))
    finally:
        await redis.aclose()
    return None if raw is None else dict(orjson.loads(raw))


async def queued_inbound(namespace: str, count: int) -> list[InboundMessage]:
    """The first `count` messages the gateways of `namespace` queued for the workers (run none),
    taken off the inbound queues: what a worker would receive, as it would receive it."""
    queued: list[InboundMessage] = []

    async def take(delivery: AbstractIncomingMessage) -> None:
        queued.append(InboundMessage.from_bytes(delivery.body))

    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for shard in range(TEST_SHARDS):
            queue = await channel.declare_queue(f"{namespace}.inbound.{shard}", passive=True)
            await queue.consume(take, no_ack=True)

        async def all_taken() -> bool:
            return len(queued) >= count

        await eventually(all_taken, what=f"{count} queued messages")
    finally:
        await connection.close()
    return queued


async def publish_raw(namespace: str, routing_key: str, body: bytes, **properties: Any) -> None:
    """Put bytes on the inbound exchange as a client of the broker would (not through the gateway)."""
    names = Names(namespace, TEST_SHARDS)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(names.inbound_exchange)
        await exchange.publish(aio_pika.Message(body, **properties), routing_key)
    finally:
        await connection.close()
