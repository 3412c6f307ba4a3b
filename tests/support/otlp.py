"""A trace collector of our own for tests and the bench: receives OTLP over HTTP (protobuf) and
gRPC, decodes `ExportTraceServiceRequest` with opentelemetry-proto, and keeps the spans."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support import ROOT, free_port

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    status: str
    attributes: dict[str, Any]
    events: tuple[str, ...]
    resource: dict[str, Any]
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id) of each linked span

    def __repr__(self) -> str:
        return f"<{self.service} {self.kind} {self.name!r} {self.trace_id}/{self.span_id}<-{self.parent_id}>"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        kind=KINDS[span.kind],
                        status=STATUS[span.status.code],
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        events=tuple(event.name for event in span.events),
                        resource=resource,
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    )
                )
    return spans


@dataclass
class Collector:
    """Start `http()` and/or `grpc()`; read `spans`, `in_trace(...)`. Call `stop()` at the end."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    _runner: web.AppRunner | None = None
    _grpc: grpc.aio.Server | None = None

    async def http(self, port: int | None = None) -> str:
        """Serve OTLP/HTTP; returns the base URL for OTEL_EXPORTER_OTLP_ENDPOINT."""
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/traces", self._on_http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def grpc(self, port: int | None = None) -> str:
        """Serve OTLP/gRPC; returns the endpoint (http:// means plaintext to the exporter)."""
        self._grpc = grpc.aio.server()
        # The generated gRPC module has no annotations.
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), self._grpc
        )
        port = self._grpc.add_insecure_port(f"127.0.0.1:{port or 0}")
        await self._grpc.start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(grace=None)

    def receive(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        self.requests += 1
        self.spans.extend(decode(request))

    def in_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def _on_http(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.receive(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._collector.receive(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def tracing_env(endpoint: str, protocol: str = "http/protobuf", **extra: str) -> dict[str, str]:
    """Service environment exporting every span to `endpoint` quickly."""
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        **extra,
    }


@contextlib.contextmanager
def collector_process(protocol: str = "grpc") -> Iterator[str]:
    """A collector in a process of its own (for the bench: its decoding must not slow the load
    driver); yields the endpoint, and prints what it received when it stops."""
    port = free_port()
    command = [sys.executable, "-m", "tests.otlp", "--protocol", protocol, "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        _wait_listening(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)


def _wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the OTLP collector did not listen on port {port}")


async def _serve(protocol: str, port: int) -> None:
    collector = Collector()
    await (collector.grpc(port) if protocol == "grpc" else collector.http(port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await collector.stop()
    print(f"collector  {len(collector.spans)} spans in {collector.requests} OTLP/{protocol} requests", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An OTLP trace collector that counts what it receives.")
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="grpc")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    asyncio.run(_serve(arguments.protocol, arguments.port))
