"""Every Prometheus metric the services export, in one place (SPEC section 5).

Counters (`_total`) and histograms (`_seconds`) only: Prometheus aggregates them across replicas
and computes any window (`increase(...[5m])`, `histogram_quantile`), which precomputed gauges
cannot give it. Each service builds its set on the registry of its own application factory
(`shared.web.new_metrics_registry`), so nothing here is process-wide state. The monitor's gauges
for system state that only it sees (queue depth, dead letters, workers alive) are its collector,
`services.monitor.gauges`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.messages import ReplyMessage, Usage

# Seconds, from 1 ms (a knowledge-base reply takes a few) to 60 s. 5 is the latency alert's
# threshold (SPEC section 5): the p95 read from these buckets is exact at it. The top buckets
# catch replies held back by a slow LLM or a backlog.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED_ROUTE = "unmatched"  # 404s: one label value, not one per path a scanner tries


@dataclass(frozen=True, slots=True)
class Children:
    """Each metric's child for a set of label values, looked up once and kept: `labels(...)` costs
    about a microsecond a call (argument checks, a lock, a dict), and the label values are few."""

    _known: dict[tuple[object, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, metric: Counter | Histogram, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._known.get(key)
        if child is None:
            child = self._known[key] = metric.labels(*values)
        return child


def _errors(registry: CollectorRegistry) -> Counter:
    """What the stats count as errors (SPEC section 5), by kind, in the service that saw them."""
    return Counter(
        "atendimento_errors", "Failed messages, deliveries and 5xx answers, by kind", ["kind"], registry=registry
    )


@dataclass(frozen=True, slots=True)
class DeliveryMetrics:
    """The gateway's outbound channel delivery (services.gateway.delivery)."""

    outcomes: Counter
    retries: Counter
    errors: Counter
    # What the platform said became of each message (WhatsApp `statuses`), and why it failed.
    statuses: Counter
    failures: Counter


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    requests: Counter
    request_seconds: Histogram
    accepted: Counter
    errors: Counter
    delivery: DeliveryMetrics
    child: Children = field(default_factory=Children, repr=False, compare=False)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        errors = _errors(registry)
        return cls(
            requests=Counter(
                "atendimento_http_requests",
                "HTTP requests answered, by route pattern, method and status",
                ["route", "method", "status"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "atendimento_http_request_duration_seconds",
                "Time to answer an HTTP request (an event stream: until it closed), by route pattern",
                ["route"],
                buckets=HTTP_BUCKETS,
                registry=registry,
            ),
            accepted=Counter(
                "atendimento_messages_accepted",
                "Messages accepted and queued (duplicates not counted), by channel",
                ["channel"],
                registry=registry,
            ),
            errors=errors,
            delivery=DeliveryMetrics(
                outcomes=Counter(
                    "atendimento_channel_deliveries",
                    "Replies handled by the channel delivery consumers, by channel and outcome",
                    ["channel", "outcome"],
                    registry=registry,
                ),
                retries=Counter(
                    "atendimento_channel_send_retries",
                    "Channel API sends retried after a transient failure",
                    ["channel"],
                    registry=registry,
                ),
                errors=errors,
                statuses=Counter(
                    "atendimento_delivery_statuses",
                    "Delivery statuses the channel reported for our messages (sent, delivered, read, failed)",
                    ["channel", "status"],
                    registry=registry,
                ),
                failures=Counter(
                    "atendimento_delivery_failures",
                    "Messages the channel reported as not delivered, by the platform's error code"
                    " (e.g. 131047: outside the 24-hour window)",
                    ["channel", "code"],
                    registry=registry,
                ),
            ),
        )

    def middleware(self) -> Middleware:
        """Counts and times every request by its route pattern (never the raw path: ids would
        make a series each). Put it outside problem_middleware, to see the status sent."""

        @web.middleware
        async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:  # a redirect, or an error nobody turned into a response
                status = exc.status
                raise
            finally:
                route = _route(request)
                self.child(self.requests, route, request.method, str(status)).inc()
                self.child(self.request_seconds, route).observe(time.perf_counter() - started)

        return count_requests


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical


class ReplyTimings(Protocol):
    """The three latencies of one reply, in milliseconds (the worker's commit carries them)."""

    @property
    def queue_wait_ms(self) -> float: ...
    @property
    def processing_ms(self) -> float: ...
    @property
    def end_to_end_ms(self) -> float: ...


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    replies: Counter
    reply_latency: Histogram
    queue_wait: Histogram
    processing: Histogram
    llm_latency: Histogram
    llm_tokens: Counter
    handoffs: Counter
    silenced: Counter
    errors: Counter
    child: Children = field(default_factory=Children, repr=False, compare=False)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WorkerMetrics:
        def histogram(name: str, documentation: str) -> Histogram:
            return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=registry)

        return cls(
            replies=Counter(
                "atendimento_replies",
                "Replies committed, by engine and channel (merged ones included; silenced messages apart)",
                ["engine", "channel"],
                registry=registry,
            ),
            reply_latency=histogram(
                "atendimento_reply_latency_seconds", "End to end: gateway acceptance to reply ready"
            ),
            queue_wait=histogram("atendimento_queue_wait_seconds", "Gateway acceptance to the worker taking it"),
            processing=histogram("atendimento_processing_seconds", "The worker taking it to the reply ready"),
            llm_latency=histogram(
                "atendimento_llm_request_duration_seconds", "One LLM completion, retries within it included"
            ),
            llm_tokens=Counter(
                "atendimento_llm_tokens",
                "Tokens the LLM used, by kind (prompt, completion)",
                ["kind"],
                registry=registry,
            ),
            handoffs=Counter(
                "atendimento_handoffs",
                "Replies that handed the conversation to a human, by channel",
                ["channel"],
                registry=registry,
            ),
            silenced=Counter(
                "atendimento_silenced_messages",
                "Messages the bot stayed silent on because a person has the conversation, by channel",
                ["channel"],
                registry=registry,
            ),
            errors=_errors(registry),
        )

    def reply_committed(self, reply: ReplyMessage, timings: ReplyTimings, usage: Usage | None) -> None:
        """The worker's one hook, once a reply is committed: `reply` as it stands after the commit,
        `usage` the LLM's for the generated content (the standing copy does not carry it)."""
        content = reply.reply
        if reply.silenced:  # no reply went out: counted apart, never as an engine's reply
            self.child(self.silenced, reply.channel).inc()
        else:
            self.child(self.replies, content.engine, reply.channel).inc()
        # Clamped: the gateway's clock may be ahead of the worker's.
        self.reply_latency.observe(max(0.0, timings.end_to_end_ms) / 1000)
        self.queue_wait.observe(max(0.0, timings.queue_wait_ms) / 1000)
        self.processing.observe(timings.processing_ms / 1000)
        if content.handoff and not reply.silenced and not reply.merged_into:
            self.child(self.handoffs, reply.channel).inc()
        if usage is not None:
            self.llm_tokens.labels("prompt").inc(usage.prompt_tokens)
            self.llm_tokens.labels("completion").inc(usage.completion_tokens)
            if usage.call_ms:
                self.llm_latency.observe(usage.call_ms / 1000)
