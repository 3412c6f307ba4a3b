"""The shapes of the system's health as the monitor reads it (SPEC section 5), checked by mypy.

They are the JSON of /monitoring/health and of the services in /monitoring/stats, and the input
of the alert rules (alerts.py): a key renamed on one side and not the other is a type error, not
an alert that silently stops firing.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

SystemStatus = Literal["healthy", "degraded", "unhealthy"]
UpDown = Literal["up", "down"]


class RedisCheck(TypedDict):
    status: UpDown
    latency_ms: NotRequired[float]  # when up: the ping's round trip
    error: NotRequired[str]  # when down: why
    primary: NotRequired[str]  # behind Sentinel: the primary's host:port
    failover: NotRequired[bool]  # behind Sentinel: down, but the sentinels answer (a failover runs)


class RabbitCheck(TypedDict):
    status: UpDown
    # Null when down: the broker cannot be asked for counts then.
    queue_depth: int | None
    consumers: int | None
    dead_letters: int | None


class Liveness(TypedDict):
    """Live processes of one service by heartbeat; "unknown" (alive None) while Redis is down."""

    status: Literal["up", "down", "unknown"]
    alive: int | None


class Checks(TypedDict):
    redis: RedisCheck
    rabbitmq: RabbitCheck
    workers: Liveness
    gateway: Liveness


class Health(TypedDict):
    status: SystemStatus
    version: str
    uptime_seconds: float
    timestamp: float  # seconds since the epoch; the JSON says it in ISO 8601 (HealthJson)
    checks: Checks
    # Why the status is not healthy, one line per check at fault (empty when healthy); and what
    # an operator should look at although every message can be answered (dead letters).
    reasons: NotRequired[list[str]]
    warnings: NotRequired[list[str]]


class HealthJson(TypedDict):
    """/monitoring/health as served."""

    status: SystemStatus
    version: str
    uptime_seconds: float
    timestamp: str
    checks: Checks
    reasons: list[str]
    warnings: list[str]


class ServiceInfo(TypedDict):
    """One live process, from its heartbeat (shared/heartbeat.py)."""

    name: str
    instance: str
    uptime_seconds: float | None
    memory_rss_bytes: int | None
    memory_percent: float | None
    version: str | None


def health_json(health: Health, timestamp: str) -> HealthJson:
    return {
        "status": health["status"],
        "version": health["version"],
        "uptime_seconds": health["uptime_seconds"],
        "timestamp": timestamp,
        "checks": health["checks"],
        "reasons": health.get("reasons", []),
        "warnings": health.get("warnings", []),
    }
