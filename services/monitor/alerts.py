"""The alert rules of SPEC section 5 (thresholds from the production guide), evaluated on a snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    severity: str
    value: float | str
    threshold: float | str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
        }


def evaluate(health: dict[str, Any], summary: dict[str, Any], services: list[dict[str, Any]]) -> list[Alert]:
    alerts: list[Alert] = []
    status = health["status"]
    if status != "healthy":
        alerts.append(Alert("SystemNotHealthy", "critical", status, "healthy", f"system status is {status}"))
    if health["checks"]["redis"]["status"] != "up":
        alerts.append(Alert("RedisDisconnected", "critical", "down", "up", "Redis is unreachable"))
    errors = summary["errors"]["last_5_minutes"]
    if errors > 10:
        alerts.append(Alert("ErrorsCritical", "critical", errors, 10, f"{errors} errors in the last 5 minutes"))
    elif errors > 5:
        alerts.append(Alert("ErrorsHigh", "warning", errors, 5, f"{errors} errors in the last 5 minutes"))
    p95 = summary["latency_ms"]["p95"]
    if p95 > 5000:
        alerts.append(Alert("LatencyHigh", "warning", p95, 5000, f"p95 latency {p95:.0f} ms over 5 s"))
    for service in services:
        alerts.extend(_service_alerts(service))
    return alerts


def _service_alerts(service: dict[str, Any]) -> list[Alert]:
    who = f"{service['name']} {service['instance']}"
    alerts: list[Alert] = []
    uptime = float(service.get("uptime_seconds") or 0)
    if uptime < 60:
        alerts.append(Alert("UptimeVeryLow", "critical", uptime, 60, f"{who} restarted {uptime:.0f}s ago"))
    elif uptime < 300:
        alerts.append(Alert("UptimeLow", "warning", uptime, 300, f"{who} restarted {uptime:.0f}s ago"))
    memory = float(service.get("memory_percent") or 0)
    if memory > 90:
        alerts.append(Alert("MemoryCritical", "critical", memory, 90, f"{who} uses {memory:.0f}% of its memory"))
    elif memory > 80:
        alerts.append(Alert("MemoryHigh", "warning", memory, 80, f"{who} uses {memory:.0f}% of its memory"))
    return alerts
