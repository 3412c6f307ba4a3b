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
from typing import Any

from services.monitor import alerts
from services.monitor.alerts import Alert
from services.monitor.stats import Raw, iso, read_raw, summarize
from services.monitor.system import SystemView
from shared.store import REDIS_ERRORS, Store


@dataclass(frozen=True, slots=True)
class Observation:
    timestamp: float
    health: dict[str, Any]
    services: list[dict[str, Any]] | None
    raw: Raw | None
    summary: dict[str, Any] | None
    alerts: list[Alert]

    @property
    def status(self) -> str:
        return str(self.health["status"])


async def _read_stats(store: Store) -> Raw | None:
    try:
        return await read_raw(store)
    except REDIS_ERRORS:
        return None


async def observe(view: SystemView) -> Observation:
    services = await view.services()
    health, raw = await asyncio.gather(view.health(services), _read_stats(view.store))
    summary = summarize(raw) if raw is not None else None
    return Observation(
        timestamp=time.time(),
        health=health,
        services=services,
        raw=raw,
        summary=summary,
        alerts=alerts.evaluate(health, summary, services),
    )


def stats_body(observation: Observation, started_at: float) -> dict[str, Any]:
    """/monitoring/stats (SPEC section 5). Counters are null while Redis cannot be read."""
    rabbitmq = observation.health["checks"]["rabbitmq"]
    summary = observation.summary or {
        "messages": None,
        "errors": None,
        "users": None,
        "latency_ms": None,
        "latency_breakdown_ms": None,
        "tokens_24h": None,
    }
    return {
        "timestamp": iso(observation.timestamp),
        "uptime_seconds": round(observation.timestamp - started_at, 1),
        "status": observation.status,
        **summary,
        "queue": {
            "depth": rabbitmq.get("queue_depth"),
            "consumers": rabbitmq.get("consumers"),
            "dead_letters": rabbitmq.get("dead_letters"),
        },
        "services": observation.services,
        "alerts": [alert.to_dict() for alert in observation.alerts],
        "unavailable": [] if observation.summary is not None else ["redis"],
    }
