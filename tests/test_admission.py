"""A message's rate limits and claim cost the gateway one Redis command (services/gateway/admission.py),
and a client address is charged once per request, whether or not the request gets that far."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import aiohttp
from redis.asyncio import Redis

from shared.names import Names
from tests.support import TEST_SHARDS, Service, Stack, eventually, post_message, web_id
from tests.support.pipeline import wait_ready
from tests.support.redis_monitor import monitoring

MESSAGES = 20


async def test_limits_and_claim_are_one_script_call_per_message(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    # Both limits on, high enough never to refuse: each message is taken from two buckets.
    gateway = await stack.start("gateway", RATE_LIMIT_PER_USER="1000", RATE_LIMIT_PER_IP="1000")
    await wait_ready(stack)
    names = Names(stack.namespace, TEST_SHARDS)
    # A first message loads the script and the token secret; its accept lands before we count.
    warm = {"user_id": "warm", "text": "oi", "message_id": "warm"}
    status, _ = await post_message(http, gateway, warm)
    assert status == 202

    async def warm_accepted() -> bool:
        return str(await redis.get(names.claim_key(web_id("warm", "warm")))).startswith("a:")

    await eventually(warm_accepted, what="the first message's accept")
    # Heartbeats are the gateway's own; the token secret is read once per process.
    noise = (names.instances_key, names.heartbeat_key("gateway", ""), names.conversation_token_secret_key)
    bodies = [{"user_id": f"u{i % 4}", "text": "oi", "message_id": uuid.uuid4().hex} for i in range(MESSAGES)]

    async with monitoring(stack.namespace) as commands:
        results = await asyncio.gather(*(post_message(http, gateway, body) for body in bodies))
        assert [status for status, _ in results] == [202] * MESSAGES

        def seen() -> list[str]:
            return [command for command in commands.seen if not any(key in command for key in noise)]

        async def accepts_landed() -> bool:
            # MONITOR streams in order, and each accept follows its message's script call.
            return sum(command.startswith("SET ") for command in seen()) >= MESSAGES

        await eventually(accepts_landed, timeout=5, what="the accepts")
        kinds = Counter(command.split(" ")[0] for command in seen())
    assert kinds == {"EVALSHA": MESSAGES, "SET": MESSAGES}, kinds
    calls = [command for command in seen() if command.startswith("EVALSHA ")]
    for body in bodies:
        [call] = [c for c in calls if names.claim_key(web_id(body["user_id"], body["message_id"])) in c]
        assert call.count(names.rate_limit_prefix) == 2, call  # the address's bucket and the user's


async def test_the_address_is_charged_once_per_request(stack: Stack, http: aiohttp.ClientSession) -> None:
    # One message a second per address with bursts of two, the user limit off; addresses as a
    # trusted proxy reports them, so each part of the test has a bucket of its own.
    gateway = await stack.start("gateway", RATE_LIMIT_PER_IP="1", TRUSTED_PROXIES="127.0.0.1")
    await wait_ready(stack)

    async def post(address: str, body: dict[str, Any]) -> tuple[int, str]:
        return await _post(http, gateway, address, body)

    message = {"user_id": "ana", "text": "oi"}
    # Taken with the claim, and not again after the handler: two messages pass, the third is refused.
    assert [await post("203.0.113.1", message) for _ in range(3)] == [(202, ""), (202, ""), (429, "client address")]
    # A request refused before its claim (a bad body) is charged all the same, and over the limit
    # it is a 429, as when the address was charged before the handler.
    bad = {"user_id": "ana"}
    assert [await post("203.0.113.2", bad) for _ in range(2)] == [(400, "text"), (400, "text")]
    assert await post("203.0.113.2", message) == (429, "client address")
    assert await post("203.0.113.2", bad) == (429, "client address")


async def _post(http: aiohttp.ClientSession, gateway: Service, address: str, body: dict[str, Any]) -> tuple[int, str]:
    """The status and the field the problem's detail names ("" for an acceptance)."""
    headers = {"X-Forwarded-For": address}
    async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as response:
        answer = await response.json(content_type=None)
    return response.status, "" if response.status == 202 else str(answer["detail"]).split(":")[0]
