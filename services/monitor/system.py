"""The monitor's view of the whole system: dependencies, live services, queues."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any, cast

from aio_pika.abc import AbstractRobustChannel

from services.monitor.health import Checks, Health, Liveness, RabbitCheck, RedisCheck, ServiceInfo, SystemStatus
from shared import __version__
from shared.broker import BROKER_ERRORS, Broker
from shared.store import REDIS_ERRORS, Store, redis_check


@dataclass(frozen=True, slots=True)
class QueueState:
    depth: int
    consumers: int
    dead_letters: int


class SystemView:
    def __init__(
        self, store: Store, broker: Broker, heartbeat_ttl_s: float, started_at: float, timezone: tzinfo = UTC
    ) -> None:
        self.store = store
        self.broker = broker
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.started_at = started_at
        self.timezone = timezone  # BUSINESS_TIMEZONE: where the statistics' "today" begins
        self._channel: AbstractRobustChannel | None = None
        self._channel_lock = asyncio.Lock()

    async def queues(self) -> QueueState | None:
        """Depths by passive declares; None when the broker cannot be asked."""
        if not self.broker.connected:
            return None
        names = self.broker.names
        try:
            channel = await self._queue_channel()
            # robust=False: a robust channel answers a repeated passive declare from its cache,
            # with the counts of the first one.
            shard_queues = await asyncio.gather(
                *(channel.declare_queue(name, passive=True, robust=False) for name in names.shard_queues)
            )
            dead = await channel.declare_queue(names.dead_letter_queue, passive=True, robust=False)
        except BROKER_ERRORS:
            return None
        depth = sum(q.declaration_result.message_count or 0 for q in shard_queues)
        consumers = sum(q.declaration_result.consumer_count or 0 for q in shard_queues)
        return QueueState(depth, consumers, dead.declaration_result.message_count or 0)

    async def _queue_channel(self) -> AbstractRobustChannel:
        async with self._channel_lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self.broker.connection.channel(publisher_confirms=False)
            return self._channel

    async def services(self) -> list[ServiceInfo] | None:
        try:
            beats = await self.store.live_instances(self.heartbeat_ttl_s)
        except REDIS_ERRORS:
            return None
        return sorted((_service_info(beat) for beat in beats), key=lambda s: (s["name"], s["instance"]))

    async def health(self, services: list[ServiceInfo] | None) -> Health:
        """The system's health, given the live services (None when they could not be read)."""
        redis, queues = await asyncio.gather(redis_check(self.store.redis), self.queues())
        rabbitmq: RabbitCheck = {"status": "down", "queue_depth": None, "consumers": None, "dead_letters": None}
        if queues is not None:
            rabbitmq = {
                "status": "up",
                "queue_depth": queues.depth,
                "consumers": queues.consumers,
                "dead_letters": queues.dead_letters,
            }
        checks: Checks = {
            # shared.store.redis_check answers for every service in this very shape (RedisCheck).
            "redis": cast(RedisCheck, redis),
            "rabbitmq": rabbitmq,
            "workers": _liveness(services, "worker"),
            "gateway": _liveness(services, "gateway"),
        }
        status, reasons = overall_status(checks)
        return {
            "status": status,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "timestamp": time.time(),
            "checks": checks,
            "reasons": reasons,
            "warnings": warnings(checks),
        }


def _service_info(beat: dict[str, Any]) -> ServiceInfo:
    """What the monitor shows of a heartbeat (every heartbeat names its service and instance)."""
    return {
        "name": beat["name"],
        "instance": beat["instance"],
        "uptime_seconds": beat.get("uptime_seconds"),
        "memory_rss_bytes": beat.get("memory_rss_bytes"),
        "memory_percent": beat.get("memory_percent"),
        "version": beat.get("version"),
    }


def _liveness(services: list[ServiceInfo] | None, name: str) -> Liveness:
    """Heartbeats live in Redis: without Redis nobody can tell who is alive."""
    if services is None:
        return {"status": "unknown", "alive": None}
    alive = sum(1 for service in services if service["name"] == name)
    return {"status": "up" if alive else "down", "alive": alive}


def overall_status(checks: Checks) -> tuple[SystemStatus, list[str]]:
    """Unhealthy when no message can be answered; degraded when some cannot reach the system, or
    while Sentinel fails Redis over (the services hold their work until the new primary answers);
    with the reasons, one line per check at fault. Dead letters are no degradation: each is one
    message an operator should look at (a warning), not a system that fails its customers."""
    failing_over = bool(checks["redis"].get("failover", False))
    workers = checks["workers"]
    unhealthy = [
        reason
        for failing, reason in (
            (checks["redis"]["status"] != "up" and not failing_over, "redis: " + checks["redis"].get("error", "down")),
            (checks["rabbitmq"]["status"] != "up", "rabbitmq: down"),
            # Heartbeats live in Redis: while a new primary is elected nobody can tell who is alive.
            (
                workers["status"] != "up" and not (failing_over and workers["status"] == "unknown"),
                "workers: no live worker" if workers["alive"] == 0 else "workers: unknown",
            ),
        )
        if failing
    ]
    if unhealthy:
        return "unhealthy", unhealthy
    degraded = [
        reason
        for failing, reason in (
            (failing_over, "redis: failing over to a new primary"),
            (checks["gateway"]["status"] != "up", "gateway: no live gateway, no channel can hand in messages"),
        )
        if failing
    ]
    return ("degraded", degraded) if degraded else ("healthy", [])


def warnings(checks: Checks) -> list[str]:
    dead = checks["rabbitmq"].get("dead_letters") or 0
    return [f"dead_letters: {dead} message(s) in the dead-letter queue, see /admin"] if dead else []
