"""Every bad input of SPEC section 4 gets its status and a problem+json body naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.support import Stack, post_message, queued_inbound
from tests.support.pipeline import wait_ready

OK = {"user_id": "u1", "text": "Qual o prazo de entrega?"}

# (case, query, content type, raw body, expected status, text the detail must contain)
CASES: list[tuple[str, dict[str, str], str, bytes, int, str]] = [
    ("bad json", {}, "application/json", b"{not json", 400, "body"),
    ("not an object", {}, "application/json", b"[1, 2]", 400, "body"),
    ("missing user_id", {}, "application/json", orjson.dumps({"text": "oi"}), 400, "user_id"),
    ("missing text", {}, "application/json", orjson.dumps({"user_id": "u"}), 400, "text"),
    ("blank text", {}, "application/json", orjson.dumps({"user_id": "u", "text": "   "}), 400, "text"),
    ("empty user_id", {}, "application/json", orjson.dumps({"user_id": "", "text": "oi"}), 400, "user_id"),
    ("text not a string", {}, "application/json", orjson.dumps({"user_id": "u", "text": 5}), 400, "text"),
    ("text too long", {}, "application/json", orjson.dumps({"user_id": "u", "text": "a" * 4097}), 400, "text"),
    ("user_id too long", {}, "application/json", orjson.dumps({"user_id": "u" * 129, "text": "oi"}), 400, "user_id"),
    (
        "conversation_id too long",
        {},
        "application/json",
        orjson.dumps({**OK, "conversation_id": "c" * 129}),
        400,
        "conversation_id",
    ),
    ("message_id blank", {}, "application/json", orjson.dumps({**OK, "message_id": " "}), 400, "message_id"),
    ("metadata not object", {}, "application/json", orjson.dumps({**OK, "metadata": [1]}), 400, "metadata"),
    (
        "metadata over 4 KiB",
        {},
        "application/json",
        orjson.dumps({**OK, "metadata": {"k": "x" * 5000}}),
        400,
        "metadata",
    ),
    ("unknown field", {}, "application/json", orjson.dumps({**OK, "colour": "blue"}), 400, "colour"),
    ("option not a string", {}, "application/json", orjson.dumps({**OK, "option": 3}), 400, "option"),
    ("option empty", {}, "application/json", orjson.dumps({**OK, "option": ""}), 400, "option"),
    ("option blank", {}, "application/json", orjson.dumps({**OK, "option": "  "}), 400, "option"),
    ("option too long", {}, "application/json", orjson.dumps({**OK, "option": "o" * 129}), 400, "option"),
    ("option with a line break", {}, "application/json", orjson.dumps({**OK, "option": "a\nb"}), 400, "option"),
    ("option with a C1 control", {}, "application/json", orjson.dumps({**OK, "option": "a\x85b"}), 400, "option"),
    ("option without text", {}, "application/json", orjson.dumps({"user_id": "u", "option": "frete"}), 400, "text"),
    ("70 KiB body", {}, "application/json", orjson.dumps({**OK, "metadata": {"k": "x" * 70_000}}), 413, "body"),
    ("wrong content type", {}, "text/plain", orjson.dumps(OK), 415, "Content-Type"),
    ("wait above 30", {"wait": "31"}, "application/json", orjson.dumps(OK), 400, "wait"),
    ("wait negative", {"wait": "-1"}, "application/json", orjson.dumps(OK), 400, "wait"),
    ("wait not a number", {"wait": "soon"}, "application/json", orjson.dumps(OK), 400, "wait"),
]


async def test_each_bad_input_gets_its_status_and_a_problem_naming_the_field(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    gateway = await stack.start("gateway")
    failures: list[str] = []
    for case, query, content_type, body, status, field in CASES:
        async with http.post(
            f"{gateway.url}/v1/messages", params=query, data=body, headers={"Content-Type": content_type}
        ) as response:
            problem: dict[str, Any] = await response.json(content_type=None)
            checks = [
                response.status == status,
                response.headers["Content-Type"].startswith("application/problem+json"),
                set(problem) >= {"type", "title", "status", "detail"},
                problem.get("status") == status,
                field in str(problem.get("detail")),
            ]
            if not all(checks):
                failures.append(f"{case}: {response.status} {problem}")
    assert not failures, "\n".join(failures)


async def test_unknown_paths_and_methods_are_problems_too(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway")
    async with http.get(f"{gateway.url}/v1/nothing-here") as response:
        assert response.status == 404
        assert response.headers["Content-Type"].startswith("application/problem+json")
    async with http.get(f"{gateway.url}/v1/messages") as response:
        assert response.status == 405
        assert (await response.json(content_type=None))["status"] == 405


async def test_a_chosen_option_travels_with_the_message(stack: Stack, http: aiohttp.ClientSession) -> None:
    """`option` on POST /v1/messages reaches the worker's queue (no worker: read as is) with the
    text, which may be the option's label; a message without it carries none."""
    gateway = await stack.start("gateway")
    await wait_ready(stack)
    chosen = {"user_id": "u-option", "message_id": "m-1", "text": "Falar com atendente", "option": "handoff"}
    typed = {"user_id": "u-option", "message_id": "m-2", "text": "Qual o prazo de entrega?"}
    for body in (chosen, typed):
        status, answer = await post_message(http, gateway, body)
        assert status == 202, answer
    [first, second] = await queued_inbound(stack.namespace, 2)
    assert (first.text, first.option) == ("Falar com atendente", "handoff")
    assert (second.text, second.option) == ("Qual o prazo de entrega?", "")


async def test_openapi_document_and_chat_page_are_served(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway")
    async with http.get(f"{gateway.url}/openapi.json") as response:
        document = await response.json()
        assert document["openapi"].startswith("3.")
        assert "/v1/messages" in document["paths"]
        assert "/v1/conversations/{conversation_id}/events" in document["paths"]
        schemas = document["components"]["schemas"]
        option = schemas["MessageIn"]["properties"]["option"]
        assert (option["type"], option["minLength"], option["maxLength"]) == ("string", 1, 128)
        reply = schemas["Reply"]
        assert {"kind", "options"} <= set(reply["required"]) and "buttons" not in reply["properties"]
        assert reply["properties"]["kind"]["enum"] == ["answer", "clarify", "fallback", "smalltalk", "handoff", "agent"]
        assert reply["properties"]["options"]["items"] == {"$ref": "#/components/schemas/Option"}
        assert schemas["Option"]["required"] == ["id", "label"]
    async with http.get(f"{gateway.url}/") as response:
        assert response.status == 200
        page = await response.text()
        assert "/static/chat.js" in page
        assert response.headers["X-Frame-Options"] == "DENY"


async def test_the_conversation_derived_from_a_long_user_id_can_be_streamed(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Without `conversation_id` the conversation is derived from `user_id` (1-128 characters):
    the id the answer gives, longer than 128 characters for a long user id, opens its events."""
    gateway = await stack.start("gateway")
    await wait_ready(stack)
    user = "u" * 128
    status, answer = await post_message(http, gateway, {"user_id": user, "text": "oi"})
    assert status == 202, answer
    assert answer["conversation_id"] == f"user:{user}"
    url = f"{gateway.url}/v1/conversations/{answer['conversation_id']}/events"
    async with asyncio.timeout(10), http.get(url, params={"token": answer["conversation_token"]}) as response:
        assert response.status == 200, await response.text()
        assert (await response.content.readline()).startswith(b"retry:")
    # An id the caller chooses keeps its limit there too.
    async with http.get(f"{gateway.url}/v1/conversations/{'c' * 129}/events", params={"token": "x"}) as response:
        assert response.status == 400


async def test_the_document_lists_the_statuses_the_api_answers(stack: Stack, http: aiohttp.ClientSession) -> None:
    """A body that does not arrive in time (408) and a stream over the address's cap (429) are
    answers the document names for those operations, as problem+json."""
    gateway = await stack.start("gateway", HTTP_BODY_TIMEOUT_SECONDS="1", MAX_STREAMS_PER_IP="1")
    await wait_ready(stack)
    async with http.get(f"{gateway.url}/openapi.json") as response:
        paths = (await response.json())["paths"]
    seen: dict[tuple[str, str], int] = {}

    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
    )
    await writer.drain()
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    writer.close()
    seen[("/v1/messages", "post")] = int(status_line.split()[1])

    _, answer = await post_message(http, gateway, OK)
    url = f"{gateway.url}/v1/conversations/{answer['conversation_id']}/events"
    params = {"token": answer["conversation_token"]}
    async with asyncio.timeout(10), http.get(url, params=params) as first:
        assert first.status == 200
        async with http.get(url, params=params) as second:
            assert second.headers["Content-Type"].startswith("application/problem+json")
            seen[("/v1/conversations/{conversation_id}/events", "get")] = second.status

    assert seen == {("/v1/messages", "post"): 408, ("/v1/conversations/{conversation_id}/events", "get"): 429}
    for (path, method), status in seen.items():
        responses = paths[path][method]["responses"]
        assert str(status) in responses, (path, method, status)
        assert "application/problem+json" in responses[str(status)]["content"]
