"""One OpenTelemetry trace per message, across gateway, RabbitMQ and worker (issue 6, SPEC 2 and 4).

The services export to a collector of our own (tests/support/otlp.py) over OTLP/HTTP and OTLP/gRPC.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from shared.names import Names
from tests.support import (
    PRAZO,
    REDIS_PORT,
    REDIS_URL,
    ROOT,
    TEST_SHARDS,
    Service,
    Stack,
    eventually,
    free_port,
    web_id,
)
from tests.support.channel_fakes import (
    PHONE_NUMBER_ID,
    WHATSAPP_ENV,
    Answer,
    FakeChannelApi,
    post_whatsapp,
    whatsapp_text,
)
from tests.support.deadletters import ADMIN_TOKEN, bearer, dead_letters, post_letter, publish_to_queue
from tests.support.faultproxy import FaultProxy
from tests.support.otlp import Collector, ReceivedSpan, tracing_env
from tests.support.pipeline import wait_ready
from tests.support.tracing import new_traceparent, post_traced, spans_of

GATEWAY = "atendimento-gateway"
# The attribute a merged message's span names the replying message by (shared/telemetry.py).
MERGED_INTO = "atendimento.reply.merged_into"


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    """Tests ask for it before `stack`: fixtures are torn down in reverse, and the services flush
    their last spans to it as they stop (to a collector already gone, each waits out the flush timeout)."""
    collector = Collector()
    try:
        yield collector
    finally:
        await collector.stop()


def by_name(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [span for span in spans if span.service == service and span.name == name]
    assert len(found) == 1, (service, name, spans)
    return found[0]


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """Span ids from `span`'s parent up to the root of what the collector holds."""
    index = {s.span_id: s for s in spans}
    chain: list[str] = []
    parent = span.parent_id
    while parent:
        chain.append(parent)
        parent = index[parent].parent_id if parent in index else ""
    return chain


async def traced_whatsapp(collector: Collector, stack: Stack, api: FakeChannelApi) -> Service:
    """A gateway with WhatsApp on `api` (the Graph API stand-in) and a worker, both tracing to
    `collector`; the gateway."""
    stack.extra_env.update(tracing_env(await collector.http()))
    gateway = await stack.start("gateway", **WHATSAPP_ENV, **api.env())
    await stack.start("worker")
    await wait_ready(stack)
    return gateway


def new_sender() -> str:
    return f"55119{uuid.uuid4().int % 10**8:08d}"


async def graph_api_call(collector: Collector) -> ReceivedSpan:
    """The gateway's CLIENT span of its call to the Graph API, once exported."""

    async def called() -> ReceivedSpan | None:
        found = [s for s in collector.spans if s.service == GATEWAY and s.name == "POST whatsapp"]
        return found[0] if found else None

    return await eventually(called, what="the Graph API call's span")


def assert_no_span_names(collector: Collector, sender: str) -> None:
    """The sender's phone number is personal data: no span attribute holds it in full."""
    for span in collector.spans:
        for key, value in span.attributes.items():
            assert sender not in str(value), (span, key, value)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_a_message_is_one_trace_from_the_callers_traceparent_to_the_reply(
    collector: Collector, stack: Stack, http: aiohttp.ClientSession, protocol: str
) -> None:
    endpoint = await (collector.http() if protocol == "http/protobuf" else collector.grpc())
    env = tracing_env(endpoint, protocol)
    if protocol == "grpc":
        del env["OTEL_EXPORTER_OTLP_PROTOCOL"]  # grpc is the default
    stack.extra_env.update(env)
    gateway = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)  # probes: these requests must leave no span
    for probe in ("/monitoring/live", "/metrics"):
        async with http.get(gateway.url + probe) as response:
            assert response.status == 200

    traceparent, trace_id, caller_span = new_traceparent()
    conversation, message_id = f"c-{uuid.uuid4().hex}", f"m-{uuid.uuid4().hex}"
    body = {"user_id": "ana", "conversation_id": conversation, "message_id": message_id, "text": PRAZO}
    status, answer = await post_traced(http, gateway.url, body, traceparent)
    assert status == 200, answer

    ns = stack.namespace
    gw, wk = "atendimento-gateway", "atendimento-worker"
    spans = await spans_of(
        collector,
        trace_id,
        (gw, "POST /v1/messages"),
        (gw, f"publish {ns}.inbound"),
        (gw, "redis claim"),
        (wk, f"process {ns}.inbound"),
        (wk, "engine kb"),
        (wk, "redis commit"),
        (wk, f"publish {ns}.replies"),
    )
    server = by_name(spans, gw, "POST /v1/messages")
    producer = by_name(spans, gw, f"publish {ns}.inbound")
    consumer = by_name(spans, wk, f"process {ns}.inbound")
    engine = by_name(spans, wk, "engine kb")
    hand_back = by_name(spans, wk, f"publish {ns}.replies")

    # The caller's trace is continued, with its tracestate carried across RabbitMQ.
    assert server.kind == "SERVER" and server.parent_id == caller_span
    assert server.attributes["http.route"] == "/v1/messages"
    assert server.attributes["http.response.status_code"] == 200
    assert producer.kind == "PRODUCER" and consumer.kind == "CONSUMER"
    assert producer.span_id in ancestors(consumer, spans)
    assert caller_span in ancestors(consumer, spans)
    assert consumer.span_id in ancestors(engine, spans)
    assert consumer.span_id in ancestors(hand_back, spans)
    assert hand_back.kind == "PRODUCER"

    shard = producer.attributes["messaging.rabbitmq.destination.routing_key"]
    assert producer.attributes == producer.attributes | {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.destination.name": f"{ns}.inbound",
        # Spans name the ids inside the system, scoped by the web user (as logs do).
        "messaging.message.id": web_id("ana", message_id),
        "messaging.message.conversation_id": web_id("ana", conversation),
    }
    assert shard.isdigit()
    assert consumer.attributes == consumer.attributes | {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.destination.name": f"{ns}.inbound",
        "messaging.rabbitmq.destination.routing_key": shard,
        # Spans name the ids inside the system, scoped by the web user (as logs do).
        "messaging.message.id": web_id("ana", message_id),
        "messaging.message.conversation_id": web_id("ana", conversation),
        "atendimento.delivery.redelivered": False,
    }
    assert engine.attributes["atendimento.reply.sources"] == answer["reply"]["sources"]
    assert {span.status for span in spans} == {"UNSET"}

    for span, service in ((server, gw), (consumer, wk)):
        assert span.resource["service.namespace"] == ns
        assert span.resource["service.version"]
        assert span.resource["service.instance.id"]
        assert span.resource["service.name"] == service
    paths = {span.attributes.get("url.path") for span in collector.spans}
    assert not paths & {"/monitoring/live", "/monitoring/health", "/metrics"}, paths


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


async def test_a_message_redelivered_after_a_worker_crash_stays_in_its_trace(
    collector: Collector, stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.extra_env.update(tracing_env(await collector.http()))
    redis = FaultProxy(REDIS_PORT)
    await redis.start()
    try:
        gateway = await stack.start("gateway")
        doomed = await stack.start("worker", REDIS_URL=REDIS_URL.replace(f":{redis.target[1]}", f":{redis.port}"))
        await wait_ready(stack)
        # Cut the worker's Redis: it takes the message, generates, then holds it unacked at the commit.
        await redis.close()
        traceparent, trace_id, _ = new_traceparent()
        message_id = f"m-{uuid.uuid4().hex}"
        body = {"user_id": "bia", "message_id": message_id, "text": PRAZO}
        status, _ = await post_traced(http, gateway.url, body, traceparent, wait=0)
        assert status == 202

        async def holding() -> dict[str, Any] | None:
            lines = [line for line in json_lines(doomed.logs()) if line["message"].startswith("Redis unavailable")]
            return lines[0] if lines else None

        held = await eventually(holding, what="the worker to hold the message")
        assert held["trace_id"] == trace_id and held["message_id"] == web_id("bia", message_id)
        doomed.kill()
        assert doomed.process is not None and doomed.process.wait(10) == -9
    finally:
        await redis.close()

    await stack.start("worker")
    status, answer = await post_traced(http, gateway.url, body, traceparent, wait=15)
    assert status == 200 and answer["duplicate"] is True, answer

    ns = stack.namespace
    spans = await spans_of(collector, trace_id, ("atendimento-worker", f"process {ns}.inbound"))
    (consumer,) = [span for span in spans if span.kind == "CONSUMER"]  # the killed one never ended its span
    assert consumer.attributes["atendimento.delivery.redelivered"] is True
    assert consumer.attributes["messaging.message.id"] == web_id("bia", message_id)
    assert consumer.resource["service.instance.id"] != held.get("instance")
    producer = by_name(spans, "atendimento-gateway", f"publish {ns}.inbound")
    assert producer.span_id in ancestors(consumer, spans)


async def test_tracing_off_or_collector_unreachable_changes_nothing(stack: Stack, http: aiohttp.ClientSession) -> None:
    """OTEL_SDK_DISABLED=true on one gateway; a collector that accepts connections and never
    answers for another gateway (gRPC) and the worker (HTTP): every message is answered, and the
    processes still stop cleanly (the flush at shutdown gives up rather than hang)."""
    blackhole = await asyncio.start_server(_swallow, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{blackhole.sockets[0].getsockname()[1]}"
    try:
        disabled = await stack.start("gateway", OTEL_SDK_DISABLED="true")
        grpc_gateway = await stack.start("gateway", **tracing_env(endpoint, "grpc"))
        worker = await stack.start("worker", **tracing_env(endpoint, "http/protobuf"))
        await wait_ready(stack)

        async def ask(gateway: Service, number: int) -> None:
            body = {"user_id": f"u{number}", "text": PRAZO}
            status, answer = await post_traced(http, gateway.url, body, new_traceparent()[0])
            assert status == 200 and answer["status"] == "answered", answer

        await asyncio.gather(*(ask(gateway, i) for i in range(20) for gateway in (disabled, grpc_gateway)))
        # Stopped together: the two that export each wait out their flush timeout.
        stopping = (worker, grpc_gateway, disabled)
        codes = await asyncio.gather(*(asyncio.to_thread(service.stop) for service in stopping))
        for service, code in zip(stopping, codes, strict=True):
            assert code == 0, service.logs()[-3000:]
            assert json_lines(service.logs())  # export failures are logged as JSON lines, like the rest
        assert "tracing to OTLP" not in disabled.logs()
    finally:
        blackhole.close()


async def _swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and read, never answer: the worst kind of unreachable collector."""
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def test_a_failing_llm_call_is_an_error_span_and_the_fallback_reply_still_arrives(
    collector: Collector, stack: Stack, http: aiohttp.ClientSession
) -> None:
    pytest.importorskip("services.worker.engines.openai", reason="the LLM engine (issue 4) is not in the tree yet")
    llm = await _fake_openai()
    try:
        stack.extra_env.update(tracing_env(await collector.http()))
        model = "tiny-test-model"
        gateway = await stack.start("gateway")
        await stack.start(
            "worker", REPLY_ENGINE="openai", OPENAI_BASE_URL=llm.url, OPENAI_API_KEY="sk-test", OPENAI_MODEL=model
        )
        await wait_ready(stack)
        results = {}
        for text in ("Qual o prazo de entrega?", "FALHE: qual o prazo de entrega?"):
            traceparent, trace_id, _ = new_traceparent()
            status, answer = await post_traced(http, gateway.url, {"user_id": "leo", "text": text}, traceparent)
            assert status == 200, answer
            spans = await spans_of(collector, trace_id, ("atendimento-worker", f"chat {model}"))
            results[text.startswith("FALHE")] = (answer, by_name(spans, "atendimento-worker", f"chat {model}"))
    finally:
        await llm.stop()

    answered, ok_span = results[False]
    assert answered["reply"]["engine"] == "openai"
    assert ok_span.kind == "CLIENT" and ok_span.status == "UNSET"
    assert ok_span.attributes["gen_ai.request.model"] == model
    assert ok_span.attributes["gen_ai.usage.input_tokens"] == 42
    assert ok_span.attributes["gen_ai.usage.output_tokens"] == 7
    fallback, failed_span = results[True]
    assert fallback["reply"]["engine"] == "kb-fallback" and fallback["reply"]["text"]
    assert failed_span.status == "ERROR"
    assert "exception" in failed_span.events or failed_span.attributes.get("error.type")


class _FakeLlm:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner, self.url = runner, url

    async def stop(self) -> None:
        await self.runner.cleanup()


# A model's answer in the engine's reply format (services/worker/engines/openai.py REPLY_FORMAT).
ANSWER = '{"kind": "answer", "text": "Até 5 dias úteis.", "sources": ["prazo-entrega"], "options": []}'


async def _fake_openai() -> _FakeLlm:
    """An OpenAI-compatible /chat/completions that fails (HTTP 500) when the user's text says FALHE."""

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        if any("FALHE" in str(message.get("content", "")) for message in body["messages"]):
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=500)
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return _FakeLlm(runner, f"http://127.0.0.1:{port}/v1")


def test_the_standard_otel_variables_configure_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from shared.settings import Settings
    from shared.telemetry import create_tracer_provider

    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    quiet = create_tracer_provider("worker", Settings.from_env({}))
    assert quiet is not None and not quiet._active_span_processor._span_processors, "no collector, no exporter"
    settings = Settings.from_env(
        {"ATENDIMENTO_NAMESPACE": "ns-a", "INSTANCE_ID": "w-1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    )
    provider = create_tracer_provider("worker", settings)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "atendimento-worker"
    assert provider.resource.attributes["service.namespace"] == "ns-a"
    assert provider.resource.attributes["service.instance.id"] == "w-1"
    assert provider.resource.attributes["service.version"]
    (processor,) = provider._active_span_processor._span_processors
    assert isinstance(processor.span_exporter, GrpcExporter)  # type: ignore[attr-defined]
    provider.shutdown()

    monkeypatch.setenv("OTEL_SERVICE_NAME", "bot-worker-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    settings = Settings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_EXPORTER": "otlp"})
    provider = create_tracer_provider("worker", settings)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "bot-worker-eu"
    assert provider.resource.attributes["deployment.environment.name"] == "staging"
    assert isinstance(provider.sampler, ParentBased)
    assert isinstance(provider.sampler._root, TraceIdRatioBased) and provider.sampler._root.rate == 0.1
    (processor,) = provider._active_span_processor._span_processors
    assert isinstance(processor.span_exporter, HttpExporter)  # type: ignore[attr-defined]
    provider.shutdown()

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert create_tracer_provider("worker", settings) is None


def test_otel_traces_exporter_takes_the_sdks_console_value_and_lists() -> None:
    """OTEL_TRACES_EXPORTER is honoured as the SDK documents it (SPEC 2): `console` (spans printed
    to stdout, for a look without a collector) and comma-separated lists, not only `otlp`/`none`."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from shared.settings import ConfigError, Settings
    from shared.startup import tracing_target
    from shared.telemetry import create_tracer_provider

    def exporters(value: str) -> list[type]:
        provider = create_tracer_provider("gateway", Settings.from_env({"OTEL_TRACES_EXPORTER": value}))
        assert provider is not None
        found = [type(p.span_exporter) for p in provider._active_span_processor._span_processors]  # type: ignore[attr-defined]
        provider.shutdown()
        return found

    assert exporters("console") == [ConsoleSpanExporter]
    assert exporters("otlp, console") == [GrpcExporter, ConsoleSpanExporter]
    assert exporters("none") == []
    assert tracing_target(Settings.from_env({"OTEL_TRACES_EXPORTER": "console"})) == "console"
    for wrong in ("zipkin", "otlp,none"):
        with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER="):
            Settings.from_env({"OTEL_TRACES_EXPORTER": wrong})


async def test_a_whatsapp_message_is_one_trace_to_the_graph_api_and_no_span_names_the_customers_phone(
    collector: Collector, api: FakeChannelApi, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """From Meta's webhook call to the Graph API call carrying the reply: one trace, the channel
    API call a CLIENT span in it. The sender's phone number is personal data: spans name it masked,
    as log lines do (docs/privacy.md), never in full (the conversation id holds it)."""
    gateway = await traced_whatsapp(collector, stack, api)
    sender = new_sender()
    wamid = f"wamid.{uuid.uuid4().hex}"
    status, body = await post_whatsapp(http, gateway, whatsapp_text(wamid, sender, PRAZO))
    assert status == 200, body

    ns, gw, wk = stack.namespace, GATEWAY, "atendimento-worker"
    api_call = await graph_api_call(collector)
    spans = await spans_of(
        collector,
        api_call.trace_id,
        (gw, "POST /webhooks/whatsapp"),
        (gw, f"publish {ns}.inbound"),
        (wk, f"process {ns}.inbound"),
        (wk, "engine kb"),
        (wk, f"publish {ns}.replies"),
        (gw, f"process {ns}.replies"),
        (gw, "POST whatsapp"),
    )
    assert api_call.kind == "CLIENT" and api_call.attributes["http.response.status_code"] == 200
    webhook = by_name(spans, gw, "POST /webhooks/whatsapp")
    assert webhook.span_id in ancestors(api_call, spans)
    consumer = by_name(spans, wk, f"process {ns}.inbound")
    assert consumer.attributes["messaging.message.id"] == wamid
    assert_no_span_names(collector, sender)
    assert consumer.attributes["messaging.message.conversation_id"].endswith(sender[-4:])


async def test_a_replayed_dead_letter_stays_in_its_messages_trace(
    collector: Collector, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A dead letter replayed from the admin area is the same message: its second processing
    belongs to the trace it came with (SPEC 4: every span of this message, in every service),
    not to a new trace rooted at the monitor's publish."""
    stack.extra_env.update(tracing_env(await collector.http()))
    await stack.start("worker")
    monitor = (await stack.start("monitor", ADMIN_TOKEN=ADMIN_TOKEN)).url
    await wait_ready(stack)
    names = Names(stack.namespace, TEST_SHARDS)
    traceparent, trace_id, caller_span = new_traceparent()
    letter_id = f"raw-{uuid.uuid4().hex}"
    await publish_to_queue(
        names.shard_queue(1), b"not JSON", message_id=letter_id, headers={"traceparent": traceparent}
    )
    await eventually(lambda: dead_letters(http, monitor, 1), what="the dead letter listed")
    assert (await post_letter(http, monitor + "/admin/api/dead-letters/replay", letter_id))[0] == 200
    await eventually(lambda: dead_letters(http, monitor, 1), what="the replayed letter dead again")

    async def processed_twice() -> list[ReceivedSpan] | None:
        spans = [
            s for s in collector.spans if s.kind == "CONSUMER" and s.attributes.get("messaging.message.id") == letter_id
        ]
        return spans if len(spans) == 2 else None

    consumers = await eventually(processed_twice, what="both processings' spans")
    assert {span.trace_id for span in consumers} == {trace_id}, consumers

    # The replay, child of the context the letter came with (the retention sweep may move it too).
    async def replayed() -> ReceivedSpan | None:
        spans = [s for s in collector.in_trace(trace_id) if s.service == "atendimento-monitor"]
        return next((s for s in spans if s.kind == "PRODUCER" and s.parent_id == caller_span), None)

    await eventually(replayed, what="the monitor's publish in the letter's trace")


# In a process of its own: the tracer provider is process-wide and set once.
_UNHANDLED = """
import asyncio, json
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shared.telemetry import server_span_middleware
from shared.web import problem_middleware

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def broken(request):
    raise KeyError("a bug")

async def main():
    app = web.Application(middlewares=[server_span_middleware, problem_middleware])
    app.router.add_get("/v1/broken", broken)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/v1/broken")
        assert response.status == 500
    (span,) = exporter.get_finished_spans()
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    print(json.dumps({"status": span.status.status_code.name, "events": events}))

asyncio.run(main())
"""


def test_an_unhandled_error_is_an_error_server_span_with_its_exception_event() -> None:
    """problem_middleware turns a bug into a 500 problem+json: the request's SERVER span says
    ERROR and carries the exception (type and stack trace) for whoever reads the trace."""
    done = subprocess.run([sys.executable, "-c", _UNHANDLED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert found["status"] == "ERROR"
    assert [name for name, _ in found["events"]] == ["exception"], found
    (_, exception), *_ = found["events"]
    assert exception["exception.type"] == "KeyError" and "broken" in exception["exception.stacktrace"]


# In a process of its own too: `os.environ` is swapped for a mapping that counts the keys looked up.
_OFF = """
import asyncio, json, os
from aiohttp import web
from shared import telemetry
from shared.settings import Settings

class Counted(dict):
    looked_up = 0
    def __contains__(self, key):
        Counted.looked_up += 1
        return super().__contains__(key)

os.environ = Counted(os.environ)

async def main():
    before = telemetry._tracing(), Counted.looked_up
    started = telemetry.tracing_context("worker", Settings.from_env({}))(web.Application())
    await anext(started)
    Counted.looked_up = 0
    after = telemetry._tracing(), Counted.looked_up
    print(json.dumps({"before": before, "after": after}))

asyncio.run(main())
"""


def test_with_tracing_off_a_span_check_reads_no_environment() -> None:
    """Tracing off (OTEL_SDK_DISABLED), a service still installs a provider, the no-op one: the
    API's proxy looks a variable up in the environment at every check, several a message."""
    env = {**os.environ, "OTEL_SDK_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-c", _OFF], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert found["before"][0] is False and found["before"][1] > 0, found  # the proxy's look-up
    assert found["after"] == [False, 0], found


def test_with_nothing_exported_spans_record_nothing_yet_carry_the_callers_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No OTLP endpoint and no OTEL_TRACES_EXPORTER: spans are made only to carry the trace to the
    log lines and onwards, so they record nothing (recorded only to be dropped, they cost CPU at
    every message), and a caller's trace id goes on. With an exporter they record."""
    from shared.settings import Settings
    from shared.telemetry import create_tracer_provider, extract_context

    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = extract_context({"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"})
    quiet = create_tracer_provider("worker", Settings.from_env({}))
    printed = create_tracer_provider("worker", Settings.from_env({"OTEL_TRACES_EXPORTER": "console"}))
    assert quiet is not None and printed is not None
    span = quiet.get_tracer("test").start_span("process", context=parent)
    assert not span.is_recording()
    assert format(span.get_span_context().trace_id, "032x") == caller_trace
    assert printed.get_tracer("test").start_span("process", context=parent).is_recording()
    # A sampler asked for is the SDK's, exported or not (SPEC 2: OTEL_* as the SDK documents them).
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    sampled = create_tracer_provider("worker", Settings.from_env({"OTEL_TRACES_SAMPLER": "always_on"}))
    assert sampled is not None and sampled.get_tracer("test").start_span("process", context=parent).is_recording()


# In a process of its own: the provider is installed process-wide.
_INNER = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shared.telemetry import NO_SPAN, engine_span, push_span, redis_span

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

def inner_steps():
    with engine_span("kb"), redis_span("EVALSHA"), push_span("replies", message_id="m", conversation_id="c"):
        pass

with trace.get_tracer("test").start_as_current_span("recorded"):
    inner_steps()
recorded = sorted(span.name for span in exporter.get_finished_spans())
exporter.clear()
context = trace.SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True)
with trace.use_span(trace.NonRecordingSpan(context)):
    helpers = engine_span("kb"), redis_span("EVALSHA"), push_span("replies", message_id="m", conversation_id="c")
    made = [helper is not NO_SPAN for helper in helpers]
print(json.dumps({"recorded": recorded, "made": made}))
"""


def test_a_messages_inner_steps_make_spans_only_inside_a_recorded_one() -> None:
    """The engine, Redis and hand-back spans are children of a message's span: inside one that
    records they are made; inside one that does not (sampled out, or nothing exported) they would
    not record either, so none is made."""
    done = subprocess.run([sys.executable, "-c", _INNER], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"recorded": ["engine kb", "publish replies", "recorded", "redis EVALSHA"], "made": [False] * 3}


async def test_a_message_merged_into_a_bursts_reply_leads_to_it_in_its_trace(
    collector: Collector, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """DEBOUNCE_MS: a burst gets one reply, generated in its last message's trace. The trace of
    each earlier message ends at its process span; that span names the message whose reply
    answered it and links to that message's span, so Jaeger leads from one to the other."""
    stack.extra_env.update(tracing_env(await collector.http()))
    gateway = await stack.start("gateway")
    await stack.start("worker", DEBOUNCE_MS="1000")
    await wait_ready(stack)
    conversation = f"burst-{uuid.uuid4().hex}"
    traces = []
    for number, text in enumerate(["oi", "qual o prazo", "de entrega pra curitiba?"]):
        traceparent, trace_id, _ = new_traceparent()
        body = {
            "user_id": "iva",
            "conversation_id": conversation,
            "text": text,
            "message_id": f"{conversation}-{number}",
        }
        status, answer = await post_traced(http, gateway.url, body, traceparent, wait=10 if number == 2 else 0)
        traces.append(trace_id)
    assert status == 200 and answer["status"] == "answered", answer

    ns, wk = stack.namespace, "atendimento-worker"
    last = await spans_of(collector, traces[2], (wk, f"process {ns}.inbound"), (wk, "engine kb"))
    replying = by_name(last, wk, f"process {ns}.inbound")
    assert MERGED_INTO not in replying.attributes
    for trace_id in traces[:2]:
        merged = by_name(
            await spans_of(collector, trace_id, (wk, f"process {ns}.inbound")), wk, f"process {ns}.inbound"
        )
        assert merged.attributes[MERGED_INTO] == web_id("iva", f"{conversation}-2")
        assert merged.links == ((replying.trace_id, replying.span_id),)


async def test_a_reply_the_channel_refuses_for_good_is_a_failed_delivery_span(
    collector: Collector, api: FakeChannelApi, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """The Graph API refuses the reply (400, not retried): it is dead-lettered, and the delivery's
    process span says so (ERROR), as the worker's does for a message it dead-letters; the API
    call is a failed CLIENT span under it."""
    gateway = await traced_whatsapp(collector, stack, api)
    api.script[:] = [Answer(400, body={"error": {"message": "(#131026) Message undeliverable", "code": 131026}})]
    status, body = await post_whatsapp(http, gateway, whatsapp_text(f"wamid.{uuid.uuid4().hex}", new_sender(), PRAZO))
    assert status == 200, body
    ns, gw = stack.namespace, GATEWAY
    api_call = await graph_api_call(collector)
    spans = await spans_of(collector, api_call.trace_id, (gw, f"process {ns}.replies"))
    delivery = by_name(spans, gw, f"process {ns}.replies")
    assert api_call.status == "ERROR" and api_call.parent_id == delivery.span_id
    assert delivery.status == "ERROR", delivery


async def test_an_agents_reply_from_the_admin_area_is_traced_from_the_monitors_request_to_the_channel(
    collector: Collector, api: FakeChannelApi, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """The monitor is one of the three traced services: an agent's reply is a SERVER span of the
    monitor continuing the caller's traceparent, its publish, then the gateway's delivery and the
    Graph API call, in one trace, none of its spans naming the customer's phone number."""
    gateway = await traced_whatsapp(collector, stack, api)
    monitor = await stack.start("monitor", ADMIN_TOKEN=ADMIN_TOKEN, **WHATSAPP_ENV, **api.env())
    sender = new_sender()
    asking = whatsapp_text(f"wamid.{uuid.uuid4().hex}", sender, "quero falar com um atendente")
    assert (await post_whatsapp(http, gateway, asking))[0] == 200

    async def handed_off() -> bool:
        return bool(api.delivered_to(sender))

    await eventually(handed_off, what="the handoff's reply")
    traceparent, trace_id, caller_span = new_traceparent()
    conversation = f"whatsapp:{PHONE_NUMBER_ID}:{sender}"
    async with http.post(
        monitor.url + "/admin/api/handoffs/reply",
        json={"conversation_id": conversation, "text": "Olá, sou a Ana"},
        headers={**bearer(), "traceparent": traceparent},
    ) as response:
        assert response.status == 200, await response.text()
    ns, gw, mon = stack.namespace, GATEWAY, "atendimento-monitor"
    spans = await spans_of(
        collector,
        trace_id,
        (mon, "POST /admin/api/handoffs/reply"),
        (mon, f"publish {ns}.replies"),
        (gw, f"process {ns}.replies"),
        (gw, "POST whatsapp"),
    )
    server = by_name(spans, mon, "POST /admin/api/handoffs/reply")
    assert server.kind == "SERVER" and server.parent_id == caller_span
    assert server.span_id in ancestors(by_name(spans, gw, "POST whatsapp"), spans)
    assert_no_span_names(collector, sender)


async def test_parentbased_traceidratio_follows_the_callers_decision_in_every_service(
    collector: Collector, stack: Stack, http: aiohttp.ClientSession
) -> None:
    """OTEL_TRACES_SAMPLER=parentbased_traceidratio: a caller's sampled-out traceparent leaves no
    span in any service, even at ratio 1; a sampled-in one is kept whole, even at ratio 0."""
    ns, gw, wk = stack.namespace, "atendimento-gateway", "atendimento-worker"
    traces: dict[str, str] = {}
    for ratio in ("1.0", "0.0"):
        env = tracing_env(await collector.http(), OTEL_TRACES_SAMPLER="parentbased_traceidratio")
        env["OTEL_TRACES_SAMPLER_ARG"] = ratio
        gateway = await stack.start("gateway", **env)
        worker = await stack.start("worker", **env)
        await wait_ready(stack)
        traceparent, trace_id, _ = new_traceparent()
        if ratio == "1.0":
            traceparent = traceparent[:-2] + "00"
        status, answer = await post_traced(http, gateway.url, {"user_id": "rui", "text": PRAZO}, traceparent)
        assert status == 200, answer
        traces[ratio] = trace_id
        if ratio == "0.0":
            await spans_of(
                collector,
                trace_id,
                (gw, "POST /v1/messages"),
                (gw, f"publish {ns}.inbound"),
                (wk, f"process {ns}.inbound"),
                (wk, "engine kb"),
                (wk, f"publish {ns}.replies"),
            )
        for service in (gateway, worker):
            await asyncio.to_thread(service.stop)  # flushes what either made
        await collector.stop()
    assert collector.in_trace(traces["1.0"]) == []


async def test_sigterm_flushes_the_last_spans(collector: Collector, stack: Stack, http: aiohttp.ClientSession) -> None:
    """Spans still queued when a service is told to stop (the batch processor exports every ten
    minutes here) reach the collector before it exits, from each of the three services."""
    env = tracing_env(await collector.http(), OTEL_BSP_SCHEDULE_DELAY="600000")
    gateway = await stack.start("gateway", **env)
    worker = await stack.start("worker", **env)
    monitor = await stack.start("monitor", **env)
    await wait_ready(stack)
    traceparent, trace_id, _ = new_traceparent()
    status, answer = await post_traced(http, gateway.url, {"user_id": "flu", "text": PRAZO}, traceparent)
    assert status == 200, answer
    async with http.get(monitor.url + "/monitoring/stats", headers={"traceparent": traceparent}) as response:
        assert response.status == 200
    assert collector.in_trace(trace_id) == []  # answered, so made; queued, so not exported yet
    for service in (gateway, worker, monitor):
        assert await asyncio.to_thread(service.stop) == 0
    services = {span.service for span in collector.in_trace(trace_id)}
    assert services == {"atendimento-gateway", "atendimento-worker", "atendimento-monitor"}, services
