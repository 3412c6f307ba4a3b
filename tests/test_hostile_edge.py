"""Hostile clients at the gateway's edge (issue 26): clients that go away mid-upload are no
errors, slow and greedy clients are bounded, tokens expire and rotate, exports are safe."""

from __future__ import annotations

import asyncio
import socket
import struct

import aiohttp
from redis.asyncio import Redis

from shared.names import Names
from shared.stats import ERRORS
from tests.support import TEST_SHARDS, Service, Stack, eventually
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
