"""OpenTelemetry tracing: set-up from the standard `OTEL_*` variables, and the spans that tell a
message's story (HTTP in, publish, consume, Redis, engine, LLM, reply hand-back, HTTP out).

Configuration is the SDK's own: `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`,
`..._HEADERS`, `..._TIMEOUT`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_SERVICE_NAME`, `OTEL_BSP_*`, `OTEL_PROPAGATORS` are read by the SDK as it documents them;
only the protocol (grpc or http/protobuf), which picks the exporter class, and whether spans are
exported at all come from Settings: OTEL_TRACES_EXPORTER (`otlp`, `console`, both, or `none`), by default `otlp`
when an OTLP endpoint is set and `none` otherwise, so a first run without a collector is quiet.

The tracer provider is installed process-wide (`trace.set_tracer_provider`): the OpenTelemetry
API is built around that one global, like logging's root logger, and the helpers below reach it
through `trace.get_tracer`. Disabled (OTEL_SDK_DISABLED), the API's no-op provider is installed, and
never set up, the API's proxy stands in: either way every span is a no-op.

Context crosses RabbitMQ as W3C `traceparent`/`tracestate` AMQP headers (the aio-pika
instrumentation supports only aio-pika < 10; the propagator API needs no more than this).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from types import SimpleNamespace
from typing import Any, ParamSpec, TypeVar

import aiohttp
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, SpanKind, Status, StatusCode

from shared import __version__
from shared.logs import LogContext, log_context, mask_pii
from shared.settings import Settings

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

TRACER_NAME = "atendimento"
# Spans still queued at shutdown get this long to reach the collector; an unreachable one must not
# hold the process (the export runs in a daemon thread that is abandoned after it).
SHUTDOWN_FLUSH_S = 5.0
# Liveness, readiness and scrapes would drown the traces that matter (SPEC: not traced).
UNTRACED_PATHS = frozenset({"/monitoring/live", "/monitoring/health", "/metrics"})

MESSAGING_SYSTEM = "rabbitmq"
CONVERSATION_ID = "messaging.message.conversation_id"
REDELIVERED = "atendimento.delivery.redelivered"
MERGED_INTO = "atendimento.reply.merged_into"
TRACEPARENT = "traceparent"  # the W3C header, in AMQP headers as in HTTP


# The block of a span not made (tracing off, or outside a trace): nothing to enter or leave, and
# shared, as it keeps no state (a generator's block would cost a microsecond more each time).
NO_SPAN: contextlib.AbstractContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)


def _tracer() -> trace.Tracer:
    return _tracer_of(trace.get_tracer_provider())


@functools.lru_cache(maxsize=4)
def _tracer_of(provider: trace.TracerProvider) -> trace.Tracer:
    """The project's tracer of `provider`: the SDK makes a new one at each `get_tracer` (7 µs)."""
    return provider.get_tracer(TRACER_NAME, __version__)


# Tracing off: no provider yet (the API's proxy), or the no-op one a service installs at start.
_NO_TRACING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def _tracing() -> bool:
    """Whether a tracer provider that makes spans is installed. Without one every span is a no-op,
    and the hot paths skip making them: building a no-op span and its attributes costs about 10 µs
    a time."""
    return not isinstance(trace.get_tracer_provider(), _NO_TRACING)


def _recorded_here() -> bool:
    """Whether the current span records. A span made inside one that does not would not record
    either (the SDK's samplers decide a child as its parent, or by the trace id they share), so the
    helpers of a message's inner steps make none there: with nothing exported, that is every span."""
    return trace.get_current_span().is_recording()


# Set-up ------------------------------------------------------------------------------------------
def service_name(service: str) -> str:
    return f"atendimento-{service}"


def build_resource(service: str, settings: Settings) -> Resource:
    """Our defaults, overridden by OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES when they are set."""
    ours = Resource.create(
        {
            "service.name": service_name(service),
            "service.version": __version__,
            "service.namespace": settings.namespace,
            "service.instance.id": settings.instance_id,
        }
    )
    return ours.merge(OTELResourceDetector().detect())


def create_tracer_provider(service: str, settings: Settings) -> TracerProvider | None:
    """A provider with a batch processor and the OTLP exporter; None when OTEL_SDK_DISABLED=true.
    Without an exporter (OTEL_TRACES_EXPORTER unset and no OTLP endpoint) the provider still makes
    spans, so logs carry trace ids and `traceparent` is continued, but they record nothing unless
    OTEL_TRACES_SAMPLER is set.

    Otherwise the sampler is the SDK's reading of OTEL_TRACES_SAMPLER(_ARG) (default
    parentbased_always_on, so an incoming sampled `traceparent` is always continued)."""
    # Nothing exported and no sampler asked for: spans that record nothing, which still carry their
    # trace (a caller's, or a new one) to the logs and onwards. Recorded only to be dropped, with
    # their attributes and a tracer made for each, they nearly doubled the services' CPU a message
    # (docs/performance.md).
    sampler = None if settings.otel_exporters or settings.otel_sampler_set else ALWAYS_OFF
    provider = TracerProvider(sampler=sampler, resource=build_resource(service, settings), shutdown_on_exit=False)
    if isinstance(provider.get_tracer(TRACER_NAME), NoOpTracer):  # the SDK's own OTEL_SDK_DISABLED check
        return None
    for name in settings.otel_exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, settings.otel_exporter_protocol)))
    return provider


def _exporter(name: str, protocol: str) -> SpanExporter:
    if name == "console":  # the SDK's own: each span as JSON on stdout
        return ConsoleSpanExporter()
    # Imported on demand: each exporter pulls in its transport (grpcio or requests).
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


def tracing_context(service: str, settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context installing the tracer provider, and flushing its spans at shutdown.
    Register it first, so it flushes last, after the other contexts have drained their work."""

    async def tracing(app: web.Application) -> AsyncIterator[None]:
        provider = create_tracer_provider(service, settings)
        if provider is not None:
            trace.set_tracer_provider(provider)
            if "otlp" in settings.otel_exporters:
                log.info("tracing to OTLP over %s", settings.otel_exporter_protocol)
        elif isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            # Off, the no-op provider is installed all the same: until one is, the API looks the
            # OTEL_PYTHON_TRACER_PROVIDER variable up in the environment at each span check.
            trace.set_tracer_provider(trace.NoOpTracerProvider())
        yield
        if provider is not None:
            shutdown_in_background(provider, SHUTDOWN_FLUSH_S)

    return tracing


def shutdown_in_background(provider: TracerProvider, timeout_s: float) -> None:
    """Flush and shut down, giving up after `timeout_s` (the daemon thread then dies with us)."""
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("spans not flushed within %.0fs: the trace collector is unreachable", timeout_s)


# HTTP server -------------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def server_span_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A SERVER span per request, continuing an incoming W3C `traceparent` (SPEC section 4).
    Put it first: the status it records is the one problem_middleware made of any error."""
    if request.path in UNTRACED_PATHS or not _tracing():
        return await handler(request)
    route = request.match_info.route.resource
    template = route.canonical if route is not None else None
    with _tracer().start_as_current_span(
        f"{request.method} {template}" if template else request.method,
        context=propagate.extract(request.headers),
        kind=SpanKind.SERVER,
        # A client leaving an SSE stream cancels the handler: that is no server error.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():  # else nothing would keep them: not built (with nothing exported, never)
            span.set_attributes(_http_attributes(request, template))
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and the like, raised past problem_middleware
            _record_status(span, exc.status)
            raise
        except Exception as exc:
            fail(span, exc)
            raise
        _record_status(span, response.status)
        return response


def _http_attributes(request: web.Request, template: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": request.method,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "server.port": request.url.port or 0,
        "client.address": request.remote or "",
        "user_agent.original": request.headers.get("User-Agent", ""),
    }
    if template:
        attributes["http.route"] = template
    return attributes


def _record_status(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


# HTTP client -------------------------------------------------------------------------------------
def client_trace_config(peer_service: str | None = None) -> aiohttp.TraceConfig:
    """For `aiohttp.ClientSession(trace_configs=[client_trace_config("telegram")])`: a CLIENT span
    per request, child of the current span, with `traceparent` injected into the request. URLs are
    recorded with tokens masked (Telegram puts the bot token in the path)."""
    config = aiohttp.TraceConfig()

    async def on_request_start(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        url = params.url
        attributes: dict[str, Any] = {
            "http.request.method": params.method,
            "url.full": mask_pii(str(url.with_user(None))),
            "server.address": url.host or "",
            "server.port": url.port or 0,
        }
        if peer_service:
            attributes["peer.service"] = peer_service
        name = f"{params.method} {peer_service}" if peer_service else params.method
        span = _tracer().start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        ctx.otel_span = span
        ctx.otel_token = otel_context.attach(trace.set_span_in_context(span))
        propagate.inject(params.headers)

    async def on_request_end(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        status = params.response.status
        ctx.otel_span.set_attribute("http.response.status_code", status)
        if status >= 400:
            ctx.otel_span.set_attribute("error.type", str(status))
            ctx.otel_span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        _end_client_span(ctx)

    async def on_request_exception(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        fail(ctx.otel_span, params.exception)
        _end_client_span(ctx)

    config.on_request_start.append(on_request_start)
    config.on_request_end.append(on_request_end)
    config.on_request_exception.append(on_request_exception)
    return config


def _end_client_span(ctx: SimpleNamespace) -> None:
    if getattr(ctx, "otel_token", None) is not None:
        otel_context.detach(ctx.otel_token)
        ctx.otel_token = None
    ctx.otel_span.end()


# Messaging ---------------------------------------------------------------------------------------
def _messaging_attributes(
    operation: str, kind: str, exchange: str, routing_key: str, message_id: str | None, conversation_id: str | None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.destination.name": exchange,
    }
    if routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
    if message_id:
        attributes["messaging.message.id"] = message_id
    if conversation_id:
        # A WhatsApp conversation's id holds the customer's phone number: masked, as in log lines.
        attributes[CONVERSATION_ID] = mask_pii(conversation_id)
    return attributes


def producer_span(
    exchange: str,
    routing_key: str,
    headers: MutableMapping[str, Any],
    *,
    message_id: str | None,
    conversation_id: str | None,
) -> contextlib.AbstractContextManager[Span]:
    """A PRODUCER span around a publish; its context is injected into `headers` (the AMQP headers
    of the message), so the consumer continues this trace.

    Headers that already carry a trace context are a message published again (a dead letter
    replayed from the admin area, or moved by the retention sweep): it stays in its own trace, the
    span a child of that context, linked to the span that republishes it (the admin's request)."""
    if not _tracing():
        return NO_SPAN
    return _producer_span(exchange, routing_key, headers, message_id, conversation_id)


@contextlib.contextmanager
def _producer_span(
    exchange: str,
    routing_key: str,
    headers: MutableMapping[str, Any],
    message_id: str | None,
    conversation_id: str | None,
) -> Iterator[Span]:
    parent, links = None, None
    if TRACEPARENT in headers:
        parent = extract_context(headers)
        current = trace.get_current_span().get_span_context()
        links = [trace.Link(current)] if current.is_valid else None
    with _tracer().start_as_current_span(
        f"publish {exchange}", context=parent, kind=SpanKind.PRODUCER, links=links
    ) as span:
        if span.is_recording():  # else nothing would keep them: not built
            span.set_attributes(
                _messaging_attributes("publish", "send", exchange, routing_key, message_id, conversation_id)
            )
        propagate.inject(headers)
        yield span


def push_span(destination: str, *, message_id: str, conversation_id: str) -> contextlib.AbstractContextManager[Span]:
    """A PRODUCER span around a web reply pushed to the gateways over Redis pub/sub (services/
    worker/push.py): the trace's hand-back, named as a publish to `destination`, the replies."""
    if not _recorded_here():
        return NO_SPAN
    return _push_span(destination, message_id, conversation_id)


@contextlib.contextmanager
def _push_span(destination: str, message_id: str, conversation_id: str) -> Iterator[Span]:
    attributes = _messaging_attributes("publish", "send", destination, "", message_id, conversation_id)
    attributes["messaging.system"] = "redis"
    name = f"publish {destination}"
    with _tracer().start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


class _AmqpHeaders(Getter[Mapping[str, Any]]):
    """AMQP header values may come back as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode() if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_AMQP_GETTER = _AmqpHeaders()


def extract_context(headers: Mapping[str, Any] | None) -> otel_context.Context:
    return propagate.extract(headers or {}, getter=_AMQP_GETTER)


class ConsumerSpans:
    """The CONSUMER ("process") spans of a batch of deliveries: one per delivery, child of the
    context its producer injected (a redelivery after a crash continues the same trace), all kept
    open until the batch is settled. `activate` makes one current, for its log lines as well.

        with ConsumerSpans(deliveries) as spans:
            with spans.activate(delivery.message_id): ...
    """

    def __init__(self, deliveries: Sequence[AbstractIncomingMessage]) -> None:
        self._spans: dict[str, tuple[Span, AbstractIncomingMessage]] = {}
        self._tracing = _tracing()
        for delivery in deliveries:
            key = delivery.message_id or str(delivery.delivery_tag)
            self._spans[key] = (self._start(delivery) if self._tracing else INVALID_SPAN, delivery)

    @staticmethod
    def _start(delivery: AbstractIncomingMessage) -> Span:
        span = _tracer().start_span(
            f"process {delivery.exchange}", context=extract_context(delivery.headers), kind=SpanKind.CONSUMER
        )
        if not span.is_recording():  # nothing would keep the attributes
            return span
        attributes = _messaging_attributes(
            "process",
            "process",
            delivery.exchange or "",
            delivery.routing_key or "",
            delivery.message_id,
            delivery.correlation_id,
        )
        if delivery.delivery_tag is not None:
            attributes["messaging.rabbitmq.message.delivery_tag"] = delivery.delivery_tag
        attributes[REDELIVERED] = bool(delivery.redelivered)
        span.set_attributes(attributes)
        return span

    def __enter__(self) -> ConsumerSpans:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        for span, _ in self._spans.values():
            if exc is not None:
                fail(span, exc)
            span.end()

    def merged(self, message_id: str, into: str) -> None:
        """`message_id` (of a burst) is answered by `into`'s reply: its span names that message
        and links to its span, where the engine and the hand-back are."""
        if not self._tracing:
            return
        span, _ = self._spans.get(message_id, (INVALID_SPAN, None))
        target, _ = self._spans.get(into, (INVALID_SPAN, None))
        span.set_attribute(MERGED_INTO, into)
        span.add_link(target.get_span_context())

    def activate(self, message_id: str | None) -> contextlib.AbstractContextManager[Span]:
        """Make this message's span current (no-op span when unknown); exceptions are recorded."""
        span, delivery = self._spans.get(message_id or "", (INVALID_SPAN, None))
        fields = log_context(message_id=message_id, conversation_id=delivery.correlation_id if delivery else None)
        if not self._tracing:  # no span anywhere: making the no-op one current would change nothing
            return _Logged(span, fields)
        return _active(span, fields)


class _Logged:
    """The block of `activate` without tracing: the log fields only (a class: entered a few times
    a message, where a generator's block costs a microsecond more)."""

    __slots__ = ("_fields", "_span")

    def __init__(self, span: Span, fields: LogContext) -> None:
        self._span, self._fields = span, fields

    def __enter__(self) -> Span:
        self._fields.__enter__()
        return self._span

    def __exit__(self, *exc: object) -> None:
        self._fields.__exit__()


@contextlib.contextmanager
def _active(span: Span, fields: LogContext) -> Iterator[Span]:
    with trace.use_span(span, end_on_exit=False), fields:
        yield span


# Work inside the worker --------------------------------------------------------------------------
def engine_span(engine: str) -> contextlib.AbstractContextManager[Span]:
    """Generating a reply (knowledge-base ranking, or the LLM engine with its grounding). An
    exception leaving the block marks the span failed and is recorded on it."""
    if not _recorded_here():
        return NO_SPAN
    return _engine_span(engine)


@contextlib.contextmanager
def _engine_span(engine: str) -> Iterator[Span]:
    with _tracer().start_as_current_span(f"engine {engine}", attributes={"atendimento.engine": engine}) as span:
        yield span


def describe_reply(span: Span, engine: str, confidence: float, handoff: bool, sources: Sequence[str]) -> None:
    if not span.is_recording():  # tracing off, or not sampled: the attributes would go nowhere
        return
    span.set_attributes(
        {
            "atendimento.reply.engine": engine,
            "atendimento.reply.confidence": confidence,
            "atendimento.reply.handoff": handoff,
            "atendimento.reply.sources": list(sources),
        }
    )


@contextlib.contextmanager
def llm_span(model: str, provider: str = "openai", operation: str = "chat") -> Iterator[Span]:
    """A CLIENT span for one LLM call, with the GenAI semantic conventions. Raise inside the block
    (or call `fail`) when the call fails; report tokens with `record_llm_usage`."""
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the pre-1.37 name, still what most back-ends display
        "gen_ai.request.model": model,
    }
    with _tracer().start_as_current_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def record_llm_usage(
    span: Span,
    *,
    input_tokens: int | None,
    output_tokens: int | None,
    response_model: str | None = None,
    finish_reasons: Sequence[str] = (),
) -> None:
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))


def fail(span: Span, exc: BaseException) -> None:
    """Mark a span failed by `exc` (for errors caught before they leave the span's block)."""
    span.record_exception(exc)
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {mask_pii(str(exc))}"[:200]))


def mark_current_failed(description: str) -> None:
    """Mark the current span (e.g. a message's process span) failed without an exception at hand."""
    trace.get_current_span().set_status(Status(StatusCode.ERROR, description))


# Redis -------------------------------------------------------------------------------------------
def redis_span(operation: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
    """A CLIENT span for one Redis round trip (a command, a pipeline or a script). Only created
    inside a recorded trace: heartbeats and shard balancing would otherwise make a trace every
    second."""
    if not _recorded_here():
        return NO_SPAN
    return _redis_span(operation, attributes)


@contextlib.contextmanager
def _redis_span(operation: str, attributes: dict[str, Any]) -> Iterator[Span]:
    with _tracer().start_as_current_span(
        f"redis {operation}",
        kind=SpanKind.CLIENT,
        attributes={"db.system.name": "redis", "db.system": "redis", "db.operation.name": operation, **attributes},
    ) as span:
        yield span


def traced_redis(operation: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate a Store method that makes one Redis round trip: it runs in a `redis_span`."""

    def decorate(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(method)
        async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            with redis_span(operation):
                return await method(*args, **kwargs)

        return traced

    return decorate
