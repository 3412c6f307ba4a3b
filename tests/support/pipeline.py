"""A started stack: its services answering, and the reply events of a web conversation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from services.worker.app import ENGINE, create_app
from services.worker.engines.base import ChoosingEngine
from shared.settings import Settings
from tests.support import Service, Stack, conversation_token, eventually, get_json, sse_events


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
    async with asyncio.timeout(timeout), http.get(url, headers={"X-Conversation-Token": token}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for event, data in sse_events(response, connected):
            if event == "reply":
                events.append(data)
                if len(events) >= count:
                    return events
    return events


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
