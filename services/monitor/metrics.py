"""System gauges for Prometheus, from the evaluator's latest observation.

The monitor speaks for the whole system: these are what deploy/prometheus/alerts.yml alerts on
(a test checks that every metric the rules name is exported here). A collector, not module-level
gauges: each scrape yields the families anew, so a service that left disappears from the labels
instead of lingering with its last value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.monitor.observation import Observation

STATUS_CODES = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class SystemCollector(Collector):
    def __init__(self, latest: Callable[[], Observation | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        observation = self._latest()
        if observation is None:
            return
        checks = observation.health["checks"]
        yield _gauge(
            "atendimento_system_status",
            "System status: 0 healthy, 1 degraded, 2 unhealthy",
            STATUS_CODES[observation.status],
        )
        yield _gauge(
            "atendimento_redis_up", "1 when Redis answers the monitor's ping", checks["redis"]["status"] == "up"
        )
        rabbitmq = checks["rabbitmq"]
        yield _gauge("atendimento_rabbitmq_up", "1 when RabbitMQ answers the monitor", rabbitmq["status"] == "up")
        if rabbitmq["status"] == "up":
            yield _gauge(
                "atendimento_queue_depth", "Messages waiting in the inbound shard queues", rabbitmq["queue_depth"]
            )
            yield _gauge("atendimento_queue_consumers", "Consumers on the inbound shard queues", rabbitmq["consumers"])
            yield _gauge("atendimento_dead_letters", "Messages in the dead-letter queue", rabbitmq["dead_letters"])
        for name, check in (("workers", checks["workers"]), ("gateways", checks["gateway"])):
            if check["alive"] is not None:
                yield _gauge(f"atendimento_{name}_alive", f"Live {name} (by heartbeat)", check["alive"])
        if observation.summary is not None:
            summary = observation.summary
            yield _gauge("atendimento_errors_5m", "Errors in the last 5 minutes", summary["errors"]["last_5_minutes"])
            yield _gauge(
                "atendimento_messages_5m",
                "Messages answered in the last 5 minutes",
                summary["messages"]["last_5_minutes"],
            )
            yield _gauge(
                "atendimento_latency_p95_seconds",
                "p95 end-to-end latency (gateway acceptance to reply ready), last 5 minutes",
                summary["latency_ms"]["p95"] / 1000,
            )
        yield from self._services(observation)
        firing = GaugeMetricFamily(
            "atendimento_alerts_firing", "Alerts the monitor evaluates as firing", labels=["alertname", "severity"]
        )
        counts: dict[tuple[str, str], int] = {}
        for alert in observation.alerts:
            counts[(alert.name, alert.severity)] = counts.get((alert.name, alert.severity), 0) + 1
        for (name, severity), count in sorted(counts.items()):
            firing.add_metric([name, severity], count)
        yield firing

    def _services(self, observation: Observation) -> Iterator[GaugeMetricFamily]:
        labels = ["service", "instance"]
        uptime = GaugeMetricFamily("atendimento_service_uptime_seconds", "Uptime of each live service", labels=labels)
        ratio = GaugeMetricFamily(
            "atendimento_service_memory_ratio", "Resident memory over the memory limit (0-1)", labels=labels
        )
        rss = GaugeMetricFamily(
            "atendimento_service_memory_rss_bytes", "Resident memory of each service", labels=labels
        )
        for service in observation.services or ():
            key = [str(service["name"]), str(service["instance"])]
            uptime.add_metric(key, float(service.get("uptime_seconds") or 0))
            ratio.add_metric(key, float(service.get("memory_percent") or 0) / 100)
            rss.add_metric(key, float(service.get("memory_rss_bytes") or 0))
        yield from (uptime, ratio, rss)
