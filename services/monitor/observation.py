"""One look at the whole system: health, live services, statistics and the alerts they raise.

The /monitoring/* views, the admin dashboard and the periodic alert evaluation all read the system
through `observe()`, so they agree on what they show. Without Redis the statistics and the list of
live services cannot be read; the observation then carries None for them and says so, and the
alerts still fire (Redis disconnected, system unhealthy).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, TypedDict

from services.monitor import alerts
from services.monitor.alerts import Alert
from services.monitor.health import Health, ServiceInfo, SystemStatus
from services.monitor.outcomes import ConversationStats
from services.monitor.stats_reader import (
    ErrorCounts,
    Latency,
    LatencyBreakdown,
    MessageCounts,
    Raw,
    Summary,
    UserCounts,
    iso,
    read_raw,
    summarize,
)
from services.monitor.system import SystemView
from shared.store import REDIS_ERRORS


@dataclass(frozen=True, slots=True)
class Observation:
    timestamp: float
    health: Health
    services: list[ServiceInfo] | None
    raw: Raw | None
    summary: Summary | None
    alerts: list[Alert]

    @property
    def status(self) -> SystemStatus:
        return self.health["status"]


class QueueCounts(TypedDict):
    depth: int | None
    consumers: int | None
    dead_letters: int | None


class StatsBody(TypedDict):
    """/monitoring/stats (SPEC section 5): the counters are null while Redis cannot be read."""

    timestamp: str
    uptime_seconds: float
    status: SystemStatus
    messages: MessageCounts | None
    errors: ErrorCounts | None
    users: UserCounts | None
    latency_ms: Latency | None
    latency_breakdown_ms: LatencyBreakdown | None
    tokens_24h: dict[str, int] | None
    queue: QueueCounts
    services: list[ServiceInfo] | None
    alerts: list[dict[str, Any]]
    conversations: ConversationStats | None
    unavailable: list[str]


async def _read_stats(view: SystemView) -> Raw | None:
    try:
        return await read_raw(view.store, view.timezone)
    except REDIS_ERRORS:
        return None


async def observe(view: SystemView) -> Observation:
    services = await view.services()
    health, raw = await asyncio.gather(view.health(services), _read_stats(view))
    summary = summarize(raw) if raw is not None else None
    return Observation(
        timestamp=time.time(),
        health=health,
        services=services,
        raw=raw,
        summary=summary,
        alerts=alerts.evaluate(health, summary, services),
    )


def stats_body(
    observation: Observation, started_at: float, conversations: ConversationStats | None = None
) -> StatsBody:
    """/monitoring/stats (SPEC section 5). Counters are null while Redis cannot be read;
    `conversations` is services/monitor/outcomes.py `stats_block`."""
    rabbitmq = observation.health["checks"]["rabbitmq"]
    summary = observation.summary
    return {
        "timestamp": iso(observation.timestamp),
        "uptime_seconds": round(observation.timestamp - started_at, 1),
        "status": observation.status,
        "messages": summary["messages"] if summary else None,
        "errors": summary["errors"] if summary else None,
        "users": summary["users"] if summary else None,
        "latency_ms": summary["latency_ms"] if summary else None,
        "latency_breakdown_ms": summary["latency_breakdown_ms"] if summary else None,
        "tokens_24h": summary["tokens_24h"] if summary else None,
        "queue": {
            "depth": rabbitmq.get("queue_depth"),
            "consumers": rabbitmq.get("consumers"),
            "dead_letters": rabbitmq.get("dead_letters"),
        },
        "services": observation.services,
        "alerts": [alert.to_dict() for alert in observation.alerts],
        "conversations": conversations,
        "unavailable": [] if observation.summary is not None else ["redis"],
    }
