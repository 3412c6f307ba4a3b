"""The monitor's view of the whole system: dependencies, live services, queues."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel

from shared import __version__
from shared.broker import BROKER_ERRORS, Broker
from shared.store import REDIS_ERRORS, Store, redis_check


@dataclass(frozen=True, slots=True)
class QueueState:
    depth: int
    consumers: int
    dead_letters: int


class SystemView:
    def __init__(self, store: Store, broker: Broker, heartbeat_ttl_s: float, started_at: float) -> None:
        self.store = store
        self.broker = broker
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.started_at = started_at
        self._channel: AbstractChannel | None = None
        self._channel_lock = asyncio.Lock()

    async def queues(self) -> QueueState | None:
        """Depths by passive declares; None when the broker cannot be asked."""
        if not self.broker.connected:
            return None
        names = self.broker.names
        try:
            channel = await self._queue_channel()
            shard_queues = await asyncio.gather(
                *(channel.declare_queue(name, passive=True) for name in names.shard_queues)
            )
            dead = await channel.declare_queue(names.dead_letter_queue, passive=True)
        except BROKER_ERRORS:
            return None
        depth = sum(q.declaration_result.message_count or 0 for q in shard_queues)
        consumers = sum(q.declaration_result.consumer_count or 0 for q in shard_queues)
        return QueueState(depth, consumers, dead.declaration_result.message_count or 0)

    async def _queue_channel(self) -> AbstractChannel:
        async with self._channel_lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self.broker.connection.channel(publisher_confirms=False)
            return self._channel

    async def services(self) -> list[dict[str, Any]] | None:
        try:
            beats = await self.store.live_instances(self.heartbeat_ttl_s)
        except REDIS_ERRORS:
            return None
        keys = ("name", "instance", "uptime_seconds", "memory_rss_bytes", "memory_percent", "version")
        return sorted(({k: beat.get(k) for k in keys} for beat in beats), key=lambda s: (s["name"], s["instance"]))

    async def health(self) -> dict[str, Any]:
        redis, queues, services = await asyncio.gather(redis_check(self.store.redis), self.queues(), self.services())
        alive = {name: sum(1 for s in services or () if s["name"] == name) for name in ("worker", "gateway")}
        rabbitmq: dict[str, Any] = {"status": "down"}
        if queues is not None:
            rabbitmq = {
                "status": "up",
                "queue_depth": queues.depth,
                "consumers": queues.consumers,
                "dead_letters": queues.dead_letters,
            }
        checks = {
            "redis": redis,
            "rabbitmq": rabbitmq,
            "workers": {"status": "up" if alive["worker"] else "down", "alive": alive["worker"]},
            "gateway": {"status": "up" if alive["gateway"] else "down", "alive": alive["gateway"]},
        }
        return {
            "status": overall_status(checks),
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "timestamp": time.time(),
            "checks": checks,
        }


def overall_status(checks: dict[str, Any]) -> str:
    """Unhealthy when no message can be answered; degraded when some are at risk or need a human."""
    if any(checks[name]["status"] != "up" for name in ("redis", "rabbitmq", "workers")):
        return "unhealthy"
    if checks["gateway"]["status"] != "up" or checks["rabbitmq"].get("dead_letters", 0) > 0:
        return "degraded"
    return "healthy"
