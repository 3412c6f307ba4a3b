"""A started stack: its services answering, and the reply events of a web conversation."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from services.worker.app import ENGINE, create_app
from services.worker.engines.base import ChoosingEngine
from shared.settings import Settings
from tests.support import Service, Stack, conversation_token, eventually, get_json, post_message, sse_events


async def start_stack(stack: Stack, workers: int = 1) -> None:
    await stack.start("gateway")
    for _ in range(workers):
        await stack.start("worker")
    await stack.start("monitor")
    await wait_ready(stack)


async def wait_ready(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            for service in stack.of("gateway") + stack.of("worker"):
                status, _ = await get_json(http, service.url + "/monitoring/health")
                if status != 200:
                    return False
            return True

        await eventually(ready, what="gateway and workers ready")


# A client retries a 503 (the gateway answers it until it has a broker connection), as any should.
RETRY_503_S = 0.05


async def read_events(
    http: aiohttp.ClientSession,
    gateway: Service,
    conversation_id: str,
    count: int,
    connected: asyncio.Event | None = None,
    timeout: float = 20,
    *,
    user_id: str,
) -> list[dict[str, Any]]:
    """Collect `count` reply events from user `user_id`'s conversation's SSE stream; `connected`
    is set once the server has subscribed the stream (its first comment line)."""
    events: list[dict[str, Any]] = []
    url = f"{gateway.url}/v1/conversations/{conversation_id}/events"
    token = await conversation_token(gateway.env["ATENDIMENTO_NAMESPACE"], user_id, conversation_id)
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(url, headers={"X-Conversation-Token": token}) as response:
                if response.status == 503:  # the gateway is up but not yet connected to RabbitMQ
                    await asyncio.sleep(RETRY_503_S)
                    continue
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                async for event, data in sse_events(response, connected):
                    if event == "reply":
                        events.append(data)
                        if len(events) >= count:
                            return events
                return events


async def queue_conversations(
    http: aiohttp.ClientSession,
    stack: Stack,
    conversations: int,
    messages: int,
    names: list[str] | None = None,
) -> tuple[dict[str, list[str]], list[asyncio.Task[list[dict[str, Any]]]]]:
    """Open each conversation's event stream, then queue `messages` spread over them, round robin;
    returns what was sent to each, in order. `names`: the conversations' ids (user "eva")."""
    names = names or [f"k-{uuid.uuid4().hex[:10]}-{c}" for c in range(conversations)]
    plan = [names[i % conversations] for i in range(messages)]
    sent: dict[str, list[str]] = {name: [] for name in names}
    readers = []
    for conversation in names:
        connected = asyncio.Event()
        count = plan.count(conversation)
        readers.append(
            asyncio.create_task(
                read_events(http, stack.gateway, conversation, count, connected, timeout=90, user_id="eva")
            )
        )
        await asyncio.wait_for(connected.wait(), 10)
    for conversation in plan:
        text = f"msg {len(sent[conversation])} of {conversation}"
        status, body = await post_message(
            http, stack.gateway, {"user_id": "eva", "conversation_id": conversation, "text": text}
        )
        assert status == 202
        sent[conversation].append(body["message_id"])
    return sent, readers


async def answered(http: aiohttp.ClientSession, stack: Stack) -> int:
    _, stats = await get_json(http, stack.monitor.url + "/monitoring/stats")
    return int(stats["messages"]["total"])


async def assert_each_answered_once_in_order(
    http: aiohttp.ClientSession,
    stack: Stack,
    sent: dict[str, list[str]],
    readers: list[asyncio.Task[list[dict[str, Any]]]],
    *,
    uncounted_at_most: int = 0,
) -> None:
    """Each conversation's replies arrived once, in order, and the statistics count every message
    once. `uncounted_at_most`: after a SIGKILL, the replies whose count the killed worker had not
    flushed yet (shared/recorder.py: lost with the process, by design); never one counted twice."""
    for (conversation, ids), reader in zip(sent.items(), readers, strict=True):
        events = await reader
        assert [event["message_id"] for event in events] == ids, conversation
    total = sum(len(ids) for ids in sent.values())

    async def counted_once() -> bool:
        counted = await answered(http, stack)
        assert counted <= total, f"{counted} messages counted, {total} sent"
        return counted >= total - uncounted_at_most

    await eventually(counted_once, what="every message counted once")


@contextlib.asynccontextmanager
async def worker_in_process(env: dict[str, str], engine: ChoosingEngine) -> AsyncIterator[None]:
    """The real worker app in the test's own process, answering with `engine` (a test's stand-in)."""
    app = create_app(Settings.from_env(env))
    app[ENGINE] = engine
    server = TestServer(app)
    await server.start_server()
    try:
        yield
    finally:
        await server.close()
