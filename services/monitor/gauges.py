"""System gauges for Prometheus, from the evaluator's latest observation.

Only the state that the monitor alone sees: the system's status, Redis and RabbitMQ as it reaches
them, queue depth, dead letters, live processes by heartbeat and each one's memory against its
limit. Traffic, errors and latency are the other services' counters and histograms
(shared.metrics), windowed in PromQL by deploy/prometheus/alerts.yml. A collector, not module-level
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
        for name, documentation, value in (
            ("atendimento_queue_depth", "Messages waiting in the inbound shard queues", rabbitmq["queue_depth"]),
            ("atendimento_queue_consumers", "Consumers on the inbound shard queues", rabbitmq["consumers"]),
            ("atendimento_dead_letters", "Messages in the dead-letter queue", rabbitmq["dead_letters"]),
        ):
            if value is not None:  # none while the broker cannot be asked
                yield _gauge(name, documentation, value)
        for name, check in (("workers", checks["workers"]), ("gateways", checks["gateway"])):
            if check["alive"] is not None:
                yield _gauge(f"atendimento_{name}_alive", f"Live {name} (by heartbeat)", check["alive"])
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
        ratio = GaugeMetricFamily(
            "atendimento_service_memory_ratio",
            "Resident memory over the memory limit (0-1), by heartbeat",
            labels=["service", "instance"],
        )
        for service in observation.services or ():
            ratio.add_metric(
                [str(service["name"]), str(service["instance"])], float(service["memory_percent"] or 0) / 100
            )
        yield ratio
