"""Alerts (issue 3, SPEC section 5): each rule fires on a condition the test creates and clears when
it goes; ALERT_WEBHOOK_URL hears one "firing" and one "resolved" per episode, however many
evaluations happen in between.

The monitor runs against a Redis of the test's own (so that Redis can be stopped) and the shared
RabbitMQ. The services it watches are stand-ins that write heartbeats exactly as a service does
(`Store.beat`), with the uptime and memory the test chooses; the 5-minute traffic window is fed a
slice that the worker would have written 4 min 55 s ago, so that it ages out within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import aio_pika
import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from shared import stats
from shared.names import Names
from shared.store import REDIS_ERRORS, Store
from tests.support import AMQP_URL, TEST_SHARDS, Service, Stack, eventually, free_port, get_json
from tests.support.servers import LocalRedis

Key = tuple[str, str]


class FakeProcess:
    """Heartbeats as a gateway or worker writes them, with the uptime and memory the test sets."""

    def __init__(self, store: Store, name: str, instance: str) -> None:
        self.store, self.name, self.instance = store, name, instance
        self.uptime = 10_000.0
        self.memory_percent = 10.0
        self._task: asyncio.Task[None] | None = None

    @property
    def subject(self) -> str:
        return f"{self.name} {self.instance}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.forget(self.name, self.instance)

    async def _beat(self) -> None:
        while True:
            state = {
                "name": self.name,
                "instance": self.instance,
                "version": "test",
                "uptime_seconds": self.uptime,
                "memory_rss_bytes": 50_000_000,
                "memory_percent": self.memory_percent,
                "timestamp": time.time(),
            }
            with contextlib.suppress(*REDIS_ERRORS):
                await self.store.beat(self.name, self.instance, state, ttl_s=1.5)
            await asyncio.sleep(0.2)


class WebhookReceiver:
    """An alert receiver: records every JSON body posted to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def history(self) -> dict[Key, list[str]]:
        events: dict[Key, list[str]] = defaultdict(list)
        for body in self.bodies:
            events[(body["alert"]["name"], body["alert"]["subject"])].append(body["status"])
        return events

    async def _receive(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(status=204)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def firing(http: aiohttp.ClientSession, monitor: Service) -> set[Key]:
    """The alerts /monitoring/stats lists, less the monitor's own "just started" ones."""
    _, body = await get_json(http, monitor.url + "/monitoring/stats")
    return {(a["name"], a["subject"]) for a in body["alerts"] if not a["subject"].startswith("monitor ")}


async def feed_old_traffic(store: Store, errors: int, slow_messages: int, latency_ms: float) -> None:
    """What the workers would have written 4 min 55 s ago: errors and slow messages."""
    key = store.names.stats_fine_key(stats.slice_start(time.time() - 295, stats.FINE_SECONDS))
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(key, stats.ERRORS, errors)
        pipe.hincrby(key, "errkind:engine", errors)
        pipe.hincrby(key, stats.MESSAGES, slow_messages)
        pipe.hincrby(key, f"{stats.E2E}:{stats.bucket_of(latency_ms)}", slow_messages)
        pipe.hincrbyfloat(key, stats.LATENCY_SUM, latency_ms * slow_messages)
        pipe.hset(key, stats.LATENCY_MAX, latency_ms)
        pipe.expire(key, stats.FINE_TTL_SECONDS)
        await pipe.execute()


async def dead_letter_queue(namespace: str, action: str) -> None:
    """Put a message on the dead-letter exchange, or purge the dead-letter queue. The monitor
    declares both when it connects to RabbitMQ, which a loaded machine may not have let it do yet."""
    names = Names(namespace, TEST_SHARDS)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        if action == "add":

            async def declared() -> bool:
                checking = await connection.channel()  # a passive declaration of nothing closes it
                try:
                    await checking.get_exchange(names.dead_letter_exchange)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    return False
                await checking.close()
                return True

            await eventually(declared, timeout=60, what="the monitor's topology declared")
        channel = await connection.channel()
        if action == "add":
            exchange = await channel.get_exchange(names.dead_letter_exchange)
            await exchange.publish(aio_pika.Message(b"{}", message_id="dead-1"), "")
        else:
            queue = await channel.get_queue(names.dead_letter_queue)
            await queue.purge()
    finally:
        await connection.close()


async def test_each_rule_fires_and_clears_and_the_webhook_hears_each_episode_once(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with LocalRedis(tmp_path) as local_redis, WebhookReceiver() as hook:
        monitor = await stack.start(
            "monitor", REDIS_URL=local_redis.url, ALERT_INTERVAL_SECONDS="0.2", ALERT_WEBHOOK_URL=hook.url
        )
        redis = Redis.from_url(local_redis.url, decode_responses=True)
        store = Store(redis, Names(stack.namespace, TEST_SHARDS))
        worker, gateway = FakeProcess(store, "worker", "w-1"), FakeProcess(store, "gateway", "g-1")
        worker.start()
        gateway.start()
        try:
            await _exercise(http, monitor, hook, store, worker, gateway, local_redis, stack.namespace)
        finally:
            await gateway.stop()
            await worker.stop()
            await redis.aclose()


async def _exercise(
    http: aiohttp.ClientSession,
    monitor: Service,
    hook: WebhookReceiver,
    store: Store,
    worker: FakeProcess,
    gateway: FakeProcess,
    local_redis: LocalRedis,
    namespace: str,
) -> None:
    async def now_firing(expected: set[Key]) -> bool:
        return await firing(http, monitor) == expected

    async def wait_firing(expected: set[Key], what: str) -> None:
        await eventually(lambda: now_firing(expected), timeout=10, what=what)
        await asyncio.gather(*(eventually(partial(last_post, k, "firing"), what=f"{k} posted") for k in expected))

    async def last_post(key: Key, status: str) -> bool:
        return hook.history().get(key, [""])[-1] == status

    async def wait_clear(keys: set[Key], what: str, timeout: float = 10) -> None:
        """Cleared on the monitor's stats and the resolution posted, before the next condition."""
        await eventually(lambda: now_firing(set()), timeout=timeout, what=what)
        await asyncio.gather(*(eventually(partial(last_post, k, "resolved"), what=f"{k} resolved") for k in keys))

    await eventually(lambda: now_firing(set()), what="a quiet start")

    # Errors and latency: over both error thresholds, p95 over 5 s; they clear as the slice ages.
    await feed_old_traffic(store, errors=11, slow_messages=10, latency_ms=6000)
    traffic = {("AtendimentoErrorsCritical", ""), ("AtendimentoErrorsWarning", ""), ("AtendimentoLatencyHigh", "")}
    await wait_firing(traffic, "error and latency alerts")
    await wait_clear(traffic, "traffic alerts to clear", timeout=25)

    # Memory: 95 % fires critical and warning, 85 % only the warning, 10 % nothing.
    gateway.memory_percent = 95
    memory = {("AtendimentoMemoryCritical", gateway.subject), ("AtendimentoMemoryWarning", gateway.subject)}
    await wait_firing(memory, "memory alerts")
    gateway.memory_percent = 85
    await eventually(lambda: now_firing({("AtendimentoMemoryWarning", gateway.subject)}), what="memory warning only")
    gateway.memory_percent = 10
    await wait_clear(memory, "memory alerts to clear")

    # Uptime: a restart 30 s ago is critical, 100 s ago a warning, 400 s ago nothing.
    worker.uptime = 30
    uptime = {("AtendimentoServiceJustStarted", worker.subject), ("AtendimentoServiceRecentlyStarted", worker.subject)}
    await wait_firing(uptime, "uptime alerts")
    worker.uptime = 100
    await eventually(
        lambda: now_firing({("AtendimentoServiceRecentlyStarted", worker.subject)}), what="uptime warning only"
    )
    worker.uptime = 400
    await wait_clear(uptime, "uptime alerts to clear")

    # No live worker, and a dead letter: the system is unhealthy (for the missing worker).
    await worker.stop()
    await dead_letter_queue(namespace, "add")
    outage = {("AtendimentoNoWorkers", ""), ("AtendimentoDeadLetters", ""), ("AtendimentoSystemNotHealthy", "")}
    await wait_firing(outage, "no-worker and dead-letter alerts")
    worker.start()
    # Workers back: the dead letter alone is a warning, the system healthy again.
    await eventually(lambda: now_firing({("AtendimentoDeadLetters", "")}), what="workers back")
    await dead_letter_queue(namespace, "purge")
    await wait_clear(outage, "dead letters gone")

    # Redis stopped, then back.
    local_redis.stop()
    await wait_firing({("AtendimentoRedisDisconnected", ""), ("AtendimentoSystemNotHealthy", "")}, "Redis alerts")
    await local_redis.start()
    redis_keys = {("AtendimentoRedisDisconnected", ""), ("AtendimentoSystemNotHealthy", "")}
    await wait_clear(redis_keys, "Redis alerts to clear", timeout=20)
    history = {key: statuses for key, statuses in hook.history().items() if not key[1].startswith("monitor ")}
    episodes = {key: 1 for key in traffic | memory | uptime | outage} | {
        ("AtendimentoRedisDisconnected", ""): 1,
        ("AtendimentoSystemNotHealthy", ""): 2,
    }
    assert history == {key: ["firing", "resolved"] * count for key, count in episodes.items()}
    first = next(body for body in hook.bodies if body["alert"]["name"] == "AtendimentoErrorsCritical")
    assert first["version"] == "4" and first["alerts"][0]["labels"]["severity"] == "critical"
    assert first["alert"]["value"] == 11 and first["alert"]["threshold"] == 10


def test_the_start_up_minute_fires_nothing_a_restart_does() -> None:
    """The guide's uptime alerts are about restarts: a system starting together is quiet."""
    from services.monitor.alerts import evaluate
    from services.monitor.health import Health, ServiceInfo

    health: Health = {
        "status": "healthy",
        "version": "test",
        "uptime_seconds": 3.0,
        "timestamp": time.time(),
        "checks": {
            "redis": {"status": "up"},
            "rabbitmq": {"status": "up", "queue_depth": 0, "consumers": 1, "dead_letters": 0},
            "workers": {"status": "up", "alive": 1},
            "gateway": {"status": "up", "alive": 1},
        },
    }

    def service(name: str, instance: str, uptime: float) -> ServiceInfo:
        return {
            "name": name,
            "instance": instance,
            "uptime_seconds": uptime,
            "memory_rss_bytes": None,
            "memory_percent": None,
            "version": None,
        }

    fresh = [service(name, "1", 2.0) for name in ("gateway", "worker", "monitor")]
    assert evaluate(health, None, fresh) == []
    running = [service(name, "1", 900.0) for name in ("gateway", "worker", "monitor")]
    restarted = [*running, service("worker", "2", 2.0)]
    fired = {(alert.name, alert.subject) for alert in evaluate(health, None, restarted)}
    assert fired == {("AtendimentoServiceJustStarted", "worker 2"), ("AtendimentoServiceRecentlyStarted", "worker 2")}
