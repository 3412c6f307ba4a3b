"""Schemathesis against the running gateway's own /openapi.json: generated requests (examples,
boundary coverage, random fuzzing, and stateful chains along the document's links) must get no
5xx and only responses the document describes; and every message the gateway accepted must end
up answered. The event stream is left out: it never ends, so no request to it would either."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import ROOT, Stack, eventually, get_json, stored_reply
from tests.support.channel_fakes import TELEGRAM_ENV, WHATSAPP_ENV, FakeChannelApi
from tests.support.pipeline import wait_ready

KEY = "fuzz-key-0123456789abcdef"
MIN_REQUESTS = 500


@pytest.mark.timeout(300)
async def test_generated_requests_find_no_errors_and_lose_nothing(
    api: FakeChannelApi, stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # `api` is asked for before `stack`, so that it outlives the gateway: replies still going out as
    # the gateway stops reach it (to an API already gone, each would be retried for the whole grace).
    # Rate limits off: thousands of generated requests from one address and a handful of users
    # would otherwise be mostly 429s, which would test little. Generated text is nonsense to the
    # knowledge base, and a conversation of fallbacks would go to a human (the bot then silent, a
    # request's `wait` spent in full): the worker keeps answering instead.
    # The generated /v1/outbound requests leave a backlog of replies to a few chats, each waiting for
    # its send slot (the platform's pace per recipient); a stopping gateway lets those in hand finish
    # within its grace, which would here be spent pacing sends this test has no interest in.
    env = {"GATEWAY_API_KEYS": KEY, "RATE_LIMIT_PER_USER": "0", "RATE_LIMIT_PER_IP": "0", "SHUTDOWN_GRACE_SECONDS": "1"}
    worker_env = {"HANDOFF_AFTER_FALLBACKS": "0"}
    gateway = await stack.start("gateway", **env, **WHATSAPP_ENV, **TELEGRAM_ENV, **api.env())
    await stack.start("worker", **worker_env)
    await wait_ready(stack)

    har = tmp_path / "schemathesis.har"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        f"--config-file={ROOT / 'tests' / 'support' / 'schemathesis.toml'}",
        "run",
        f"{gateway.url}/openapi.json",
        "--checks=all",
        f"--header=Authorization: Bearer {KEY}",
        # Telegram's proof is a fixed header, so its webhook's parsing is fuzzed too; WhatsApp's is
        # a signature of each body, so there the signature check is what gets fuzzed.
        f"--header=X-Telegram-Bot-Api-Secret-Token: {TELEGRAM_ENV['TELEGRAM_SECRET_TOKEN']}",
        "--exclude-path-regex=/events$",
        "--phases=examples,coverage,fuzzing,stateful",
        # Per operation, for the fuzzing and stateful phases (the coverage phase's boundary cases do
        # not depend on it): about 1,000 requests in all, twice MIN_REQUESTS, in half the time 50 took.
        "--max-examples=25",
        "--seed=20241125",
        "--request-timeout=40",
        "--max-response-time=35",  # `wait` may hold a request for 30 s, by design
        "--workers=2",
        "--suppress-health-check=all",
        "--report=har",
        f"--report-har-path={har}",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    print(report[-6000:])
    assert process.returncode == 0, report[-6000:]

    entries = orjson.loads(har.read_bytes())["log"]["entries"]
    print(f"schemathesis sent {len(entries)} requests")
    assert len(entries) >= MIN_REQUESTS
    assert not [e for e in entries if e["response"]["status"] >= 500]

    accepted = _accepted_message_ids(entries)
    assert accepted, "no generated message was accepted: the fuzzing tested only refusals"
    print(f"{len(accepted)} messages accepted; checking that each was answered")
    headers = {"Authorization": f"Bearer {KEY}"}

    async def all_answered() -> bool:
        # Each wait names the message it is still waiting for (the deadline's message says which).
        for message_id, token in sorted(accepted, key=str):
            if token is None:  # a Telegram update: not the web API's to read, its reply is stored
                assert await stored_reply(stack.namespace, message_id) is not None, (
                    f"no reply stored for {message_id!r}"
                )
                continue
            url = f"{gateway.url}/v1/messages/{_quote(message_id)}"
            async with http.get(url, headers={**headers, "X-Conversation-Token": token}) as response:
                body = await response.json(content_type=None)
                # A conversation handed to a human (after repeated fallbacks) is the agent's to answer.
                assert response.status == 200 and body["status"] in ("answered", "handed_off"), (
                    f"{message_id!r}: {response.status} {body}"
                )
        return True

    await eventually(all_answered, timeout=60, what="every accepted message answered or with an agent")
    status, _ = await get_json(http, f"{gateway.url}/monitoring/health")
    assert status == 200


def _accepted_message_ids(entries: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    """The ids of the messages the gateway accepted, with the token that reads each: 200/202 on
    `POST /v1/messages`, and the updates the Telegram webhook said it accepted (no token)."""
    ids: set[tuple[str, str | None]] = set()
    for entry in entries:
        request, response = entry["request"], entry["response"]
        if request["method"] != "POST" or response["status"] not in (200, 202):
            continue
        if request["url"].endswith("/v1/messages") or "/v1/messages?" in request["url"]:
            answer = orjson.loads(response["content"]["text"])
            ids.add((answer["message_id"], answer["conversation_token"]))
        # What the gateway says it accepted: an update that is no message of ours (a tap on nothing,
        # both a message and a tap) is acknowledged and dropped, whatever text it holds.
        elif request["url"].endswith("/webhooks/telegram") and orjson.loads(response["content"]["text"]).get(
            "accepted"
        ):
            update = orjson.loads(request["postData"]["text"])
            ids.add((f"telegram:{update['update_id']}", None))
    return ids


def _quote(message_id: str) -> str:
    from urllib.parse import quote

    return quote(message_id, safe="")
