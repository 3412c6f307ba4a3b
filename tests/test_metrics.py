"""Prometheus metrics of every service (issue 15, SPEC section 5): messages posted through the real
stack come back as counters and histogram buckets on each service's /metrics, the text passes
`promtool check metrics`, and every service exports the standard process_* metrics."""

from __future__ import annotations

import shutil
import subprocess

import aiohttp
import pytest

from tests.support import Stack, eventually, get_json, post_message, publish_raw
from tests.support.metrics import Samples, scrape, value


def promtool_check(text: str, service: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/ensure-test-tools.sh installs it)")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    # promtool prints lint findings and exits 1 on any; a clean text gives no output at all.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        service,
        result.stdout + result.stderr,
    )


async def test_counters_and_histograms_read_back_from_every_service(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway")
    worker = await stack.start("worker")
    monitor = await stack.start("monitor", ALERT_INTERVAL_SECONDS="0.2")

    async def ready() -> bool:
        return all([(await get_json(http, s.url + "/monitoring/health"))[0] == 200 for s in (gateway, worker)])

    await eventually(ready, what="gateway and worker ready")
    _, before = await scrape(http, worker)
    answered = 0
    for index in range(3):
        status, body = await post_message(http, gateway, {"user_id": f"u{index}", "text": "Qual o prazo?"}, wait=10)
        assert status == 200, body
        answered += 1
    status, body = await post_message(http, gateway, {"user_id": "", "text": "x"})
    assert status == 400, body  # a refusal is a request too, by its route and status
    # A customer asking for a person: a handoff. Bytes that are no message: an error of its kind.
    human = {"user_id": "rui", "text": "quero falar com um atendente"}
    status, body = await post_message(http, gateway, human, wait=10)
    assert status == 200 and body["reply"]["handoff"], body
    answered += 1
    # Rui's next message, while a person has the conversation: the bot stays silent.
    status, body = await post_message(http, gateway, {"user_id": "rui", "text": "oi?"})
    assert status == 202, body
    await publish_raw(stack.namespace, "0", b"not a message", message_id="garbage")

    # The gateway: requests by route pattern and status, messages accepted by channel.
    text, samples = await scrape(http, gateway)
    promtool_check(text, "gateway")
    assert value(samples, "atendimento_http_requests_total", route="/v1/messages", method="POST", status="200") == 4
    assert value(samples, "atendimento_http_requests_total", route="/v1/messages", method="POST", status="202") == 1
    assert value(samples, "atendimento_http_requests_total", route="/v1/messages", method="POST", status="400") == 1
    assert value(samples, "atendimento_messages_accepted_total", channel="web") == 5
    assert value(samples, "atendimento_http_request_duration_seconds_count", route="/v1/messages") == 6
    assert value(samples, "process_resident_memory_bytes") > 0

    # The worker: replies by engine and channel, the end-to-end histogram's buckets, handoffs, errors.
    async def malformed_counted() -> Samples | None:
        _, found = await scrape(http, worker)
        silenced = value(found, "atendimento_silenced_messages_total", channel="web") == 1
        return found if value(found, "atendimento_errors_total", kind="malformed") == 1 and silenced else None

    await eventually(malformed_counted, what="the malformed message and the silenced one counted")
    text, samples = await scrape(http, worker)
    promtool_check(text, "worker")
    replies = sum(
        count
        for (name, labels), count in samples.items()
        if name == "atendimento_replies_total" and ("channel", "web") in labels
    )
    assert replies == answered  # the silenced message is no reply
    engines = {dict(labels)["engine"] for (name, labels) in samples if name == "atendimento_replies_total"}
    assert all(engines) and "silenced" not in engines
    for histogram in (
        "atendimento_reply_latency_seconds",
        "atendimento_queue_wait_seconds",
        "atendimento_processing_seconds",
    ):
        handled = answered + 1  # the silenced message was handled too
        assert value(samples, f"{histogram}_count") - value(before, f"{histogram}_count") == handled, histogram
        assert value(samples, f"{histogram}_bucket", le="+Inf") == value(samples, f"{histogram}_count")
        assert value(samples, f"{histogram}_bucket", le="60.0") == handled  # every one under a minute
        assert (f"{histogram}_bucket", frozenset({("le", "0.001")})) in samples  # the lowest bucket: 1 ms
    assert value(samples, "atendimento_reply_latency_seconds_sum") > 0
    assert value(samples, "atendimento_replies_total", engine="handoff", channel="web") == 1
    assert value(samples, "atendimento_handoffs_total", channel="web") == 1
    assert value(samples, "process_start_time_seconds") > 0

    # The monitor: system state only it sees, and no precomputed window any more.
    async def monitor_gauges() -> Samples | None:
        _, found = await scrape(http, monitor)
        return found if value(found, "atendimento_workers_alive") == 1 else None

    samples = await eventually(monitor_gauges, what="the monitor counting the worker")
    text, _ = await scrape(http, monitor)
    promtool_check(text, "monitor")
    assert value(samples, "atendimento_queue_depth") == 0
    assert ("atendimento_dead_letters", frozenset()) in samples
    assert not any(name.endswith("_5m") or "p95" in name for name, _ in samples)
