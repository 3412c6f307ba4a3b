"""The alert rules of SPEC section 5 (thresholds from the production guide) and their notification.

`evaluate()` turns one observation of the system into the alerts firing now; `AlertTracker` keeps
what fired before, so each alert is announced once when it starts and once when it resolves,
whatever the number of evaluations in between; `WebhookNotifier` posts those two events to
ALERT_WEBHOOK_URL in the Alertmanager webhook format (so receivers written for Alertmanager work),
with the alert as /monitoring/stats shows it in `alert`.

The rule names, severities and thresholds are those of deploy/prometheus/alerts.yml; a test keeps
the two in step. Warning and critical rules are independent, as in Prometheus: 12 errors fire both.

The guide's "uptime < 1 minute" (critical) and "< 5 minutes" (warning) are read as "a process
restarted while the system was running" (a crash, an OOM kill, a rollout): they fire only for a
process that started more than that minute (RESTART_AFTER_S) after the oldest process of the
system, the monitor included. Starting the whole system together (`make run`, a first deploy) is
no incident, and fires nothing. deploy/prometheus/alerts.yml says the same in PromQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.monitor.health import Health, ServiceInfo
from services.monitor.stats_reader import Summary, iso

log = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_QUEUE = 1000
RESTART_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    severity: str
    threshold: float | str
    unit: str = ""


# Critical: act now.
NOT_HEALTHY = Rule("AtendimentoSystemNotHealthy", "critical", "healthy")
JUST_STARTED = Rule("AtendimentoServiceJustStarted", "critical", 60, "s")
ERRORS_CRITICAL = Rule("AtendimentoErrorsCritical", "critical", 10)
MEMORY_CRITICAL = Rule("AtendimentoMemoryCritical", "critical", 90, "%")
REDIS_DOWN = Rule("AtendimentoRedisDisconnected", "critical", "up")
NO_WORKERS = Rule("AtendimentoNoWorkers", "critical", 0)
# Warning: watch.
RECENTLY_STARTED = Rule("AtendimentoServiceRecentlyStarted", "warning", 300, "s")
ERRORS_WARNING = Rule("AtendimentoErrorsWarning", "warning", 5)
MEMORY_WARNING = Rule("AtendimentoMemoryWarning", "warning", 80, "%")
LATENCY_HIGH = Rule("AtendimentoLatencyHigh", "warning", 5000, "ms")
DEAD_LETTERS = Rule("AtendimentoDeadLetters", "warning", 0)

RULES = (
    NOT_HEALTHY,
    JUST_STARTED,
    ERRORS_CRITICAL,
    MEMORY_CRITICAL,
    REDIS_DOWN,
    NO_WORKERS,
    RECENTLY_STARTED,
    ERRORS_WARNING,
    MEMORY_WARNING,
    LATENCY_HIGH,
    DEAD_LETTERS,
)


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    severity: str
    value: float | str
    threshold: float | str
    message: str
    # What the alert is about when a rule can fire for several things at once (a service instance).
    subject: str = ""

    @classmethod
    def of(cls, rule: Rule, value: float | str, message: str, subject: str = "") -> Alert:
        return cls(rule.name, rule.severity, value, rule.threshold, message, subject)

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.subject

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "subject": self.subject,
        }


def evaluate(health: Health, summary: Summary | None, services: list[ServiceInfo] | None) -> list[Alert]:
    """The alerts firing for one observation; `summary` and `services` are None when Redis is down."""
    alerts = list(_health_alerts(health))
    if summary is not None:
        alerts.extend(_traffic_alerts(summary))
    alerts.extend(_services_alerts(services or [], health["uptime_seconds"]))
    return alerts


def _health_alerts(health: Health) -> Iterable[Alert]:
    checks = health["checks"]
    status = health["status"]
    if status != "healthy":
        why = "; ".join(health.get("reasons", []))
        yield Alert.of(NOT_HEALTHY, status, f"system status is {status}" + (f": {why}" if why else ""))
    if checks["redis"]["status"] != "up":
        yield Alert.of(REDIS_DOWN, "down", "Redis is unreachable")
    if checks["workers"]["alive"] == 0:
        yield Alert.of(NO_WORKERS, 0, "no live worker: messages are queued but nobody answers them")
    dead = checks["rabbitmq"].get("dead_letters") or 0
    if dead > 0:
        yield Alert.of(DEAD_LETTERS, dead, f"{dead} message(s) in the dead-letter queue")


def _services_alerts(services: list[ServiceInfo], monitor_uptime: float) -> Iterable[Alert]:
    # The system's age: its oldest process (the monitor's own uptime is in its health).
    oldest = max((float(s["uptime_seconds"] or 0) for s in services), default=0.0)
    system_age = max(oldest, monitor_uptime)
    for service in services:
        yield from _service_alerts(service, system_age)


def _traffic_alerts(summary: Summary) -> Iterable[Alert]:
    errors = summary["errors"]["last_5_minutes"]
    for rule in (ERRORS_CRITICAL, ERRORS_WARNING):
        if errors > float(rule.threshold):
            yield Alert.of(rule, errors, f"{errors} errors in the last 5 minutes (over {rule.threshold})")
    p95 = summary["latency_ms"]["p95"]
    if p95 > float(LATENCY_HIGH.threshold):
        yield Alert.of(LATENCY_HIGH, p95, f"p95 end-to-end latency {p95 / 1000:.1f} s is over 5 s")


def _service_alerts(service: ServiceInfo, system_age: float) -> Iterable[Alert]:
    who = f"{service['name']} {service['instance']}"
    uptime = float(service["uptime_seconds"] or 0)
    restarted = system_age - uptime > RESTART_AFTER_S
    for rule in (JUST_STARTED, RECENTLY_STARTED):
        if restarted and uptime < float(rule.threshold):
            yield Alert.of(rule, uptime, f"{who} restarted {uptime:.0f} s ago", who)
    memory = float(service["memory_percent"] or 0)
    for rule in (MEMORY_CRITICAL, MEMORY_WARNING):
        if memory > float(rule.threshold):
            yield Alert.of(rule, memory, f"{who} uses {memory:.0f}% of its memory", who)


@dataclass(frozen=True, slots=True)
class Transition:
    status: str  # "firing" or "resolved"
    alert: Alert
    started_at: float
    ended_at: float | None = None


class AlertTracker:
    """Remembers the alerts between evaluations, to report only starts and ends.

    An alert is announced once it has held for `pending_s` (as Prometheus's `for:`): the monitor
    sees the world a heartbeat at a time, and a condition shorter than that (the moment between
    Redis coming back and the services' next heartbeats, say) is noise, not news.
    """

    def __init__(self, pending_s: float = 0.0) -> None:
        self._pending_s = pending_s
        self._seen: dict[tuple[str, str], float] = {}  # key -> first seen, firing or not yet
        self._firing: set[tuple[str, str]] = set()
        self._last: dict[tuple[str, str], Alert] = {}

    def update(self, alerts: list[Alert], now: float | None = None) -> list[Transition]:
        now = time.time() if now is None else now
        current = {alert.key: alert for alert in alerts}
        transitions = [
            Transition("resolved", self._last[key], self._seen[key], now) for key in self._firing - current.keys()
        ]
        for key in self._seen.keys() - current.keys():
            del self._seen[key]
            self._firing.discard(key)
        for key, alert in current.items():
            first = self._seen.setdefault(key, now)
            if key not in self._firing and now - first >= self._pending_s:
                self._firing.add(key)
                transitions.append(Transition("firing", alert, first))
        self._last = current
        return transitions

    @property
    def firing(self) -> set[tuple[str, str]]:
        return set(self._firing)


def webhook_payload(transition: Transition, namespace: str) -> dict[str, Any]:
    alert = transition.alert
    labels = {"alertname": alert.name, "severity": alert.severity, "namespace": namespace}
    if alert.subject:
        labels["subject"] = alert.subject
    annotations = {"summary": alert.message, "value": str(alert.value), "threshold": str(alert.threshold)}
    return {
        "version": "4",
        "status": transition.status,
        "receiver": "atendimento-monitor",
        "groupLabels": {"alertname": alert.name},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "alerts": [
            {
                "status": transition.status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": iso(transition.started_at),
                "endsAt": iso(transition.ended_at) if transition.ended_at else "0001-01-01T00:00:00Z",
            }
        ],
        "alert": alert.to_dict(),
    }


class WebhookNotifier:
    """Posts transitions in order from a queue of its own, so a slow receiver never delays the
    evaluation; a failed post is retried with backoff, then logged and dropped."""

    def __init__(self, url: str, namespace: str) -> None:
        self._url = url
        self._namespace = namespace
        self._queue: asyncio.Queue[Transition] = asyncio.Queue(WEBHOOK_QUEUE)

    def notify(self, transitions: Iterable[Transition]) -> None:
        for transition in transitions:
            try:
                self._queue.put_nowait(transition)
            except asyncio.QueueFull:
                log.error("alert webhook backlog full; dropped %s %s", transition.status, transition.alert.name)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                transition = await self._queue.get()
                await self._post(http, webhook_payload(transition, self._namespace))

    async def _post(self, http: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(self._url, json=payload) as response:
                    if response.status < 300:
                        return
                    log.warning("alert webhook answered %d", response.status)
            if attempt < WEBHOOK_ATTEMPTS:
                await asyncio.sleep(0.5 * 2**attempt)
        log.error("alert webhook unreachable; dropped %s %s", payload["status"], payload["alert"]["name"])
