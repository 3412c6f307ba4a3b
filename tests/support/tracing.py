"""A traced caller: its traceparent, its message, and the spans the collector got for its trace."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp

from tests.support import eventually
from tests.support.otlp import Collector, ReceivedSpan


def new_traceparent() -> tuple[str, str, str]:
    """A sampled W3C traceparent from an imaginary caller: (header, trace id, caller's span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def post_traced(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], traceparent: str, wait: float = 10
) -> tuple[int, dict[str, Any]]:
    headers = {"traceparent": traceparent, "tracestate": "caller=probe-6"}
    async with http.post(f"{url}/v1/messages", params={"wait": str(wait)}, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def spans_of(collector: Collector, trace_id: str, *wanted: tuple[str, str]) -> list[ReceivedSpan]:
    """Wait until the trace holds a span of each (service, name) in `wanted`."""

    async def complete() -> list[ReceivedSpan] | None:
        spans = collector.in_trace(trace_id)
        have = {(span.service, span.name) for span in spans}
        return spans if set(wanted) <= have else None

    return await eventually(complete, what=f"spans {wanted} in trace {trace_id}")
