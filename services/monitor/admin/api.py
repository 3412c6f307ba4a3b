"""The admin area's JSON API, for scripts (`Authorization: Bearer <ADMIN_TOKEN>`) and for the
dashboard's own session (then with the `X-CSRF-Token` header on anything that changes state).
Without either: 401 problem+json, from the guard (guard.py) before any handler here runs."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.monitor.admin import conversations, inbox, knowledge, operations, outbound, teaching
from services.monitor.admin.guard import ACTOR
from services.monitor.keys import AUDIT, CONVERSATIONS
from services.monitor.outcomes import checked_report
from services.monitor.problems import unreachable
from shared.store import REDIS_ERRORS
from shared.web import Problem, json_response


async def json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object an admin API call sends, or a problem naming what is wrong with it."""
    if request.content_type != "application/json":
        raise Problem(415, "Content-Type: must be application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise Problem(400, "body: not valid JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "body: must be a JSON object")
    return body


async def overview(request: web.Request) -> web.Response:
    page = operations.handoffs_page(request.query.get("handoffs_page"))
    return json_response(operations.overview_json(await operations.overview(request.app, page)))


async def outcomes(request: web.Request) -> web.Response:
    """Conversations, outcomes and ratings per day for 30 days, and over 7 and 30 days."""
    return json_response((await checked_report(request.app[CONVERSATIONS])).to_dict())


async def conversation(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    return json_response(await operations.conversation(request.app, actor, request.query.get("id", "")))


async def conversation_list(request: web.Request) -> web.Response:
    query, number = conversations.parse_request(request.query.get("q", ""), request.query.get("page", ""))
    return json_response((await conversations.checked_page(request.app, query, number)).to_dict())


async def audit(request: web.Request) -> web.Response:
    try:
        entries = await request.app[AUDIT].recent(200)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the audit log cannot be read") from None
    return json_response({"entries": entries})


async def replay(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    letter = await operations.replay(request.app, actor, body.get("message_id"))
    return json_response({"replayed": letter.to_dict()})


async def discard(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    letter = await operations.discard(request.app, actor, body.get("message_id"))
    return json_response({"discarded": letter.to_dict()})


async def reply(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    sent = await operations.reply_as_agent(request.app, actor, body.get("conversation_id"), body.get("text"))
    return json_response({"sent": sent.public_dict()})


async def assign(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    conversation_id = operations.identifier("conversation_id", body.get("conversation_id"))
    await inbox.assign(request.app, actor, conversation_id)
    return json_response({"assigned": conversation_id, "to": actor.name})


async def inbox_queue(request: web.Request) -> web.Response:
    return json_response({"waiting": [item.to_dict() for item in await inbox.checked_queue(request.app)]})


async def send_outbound(request: web.Request) -> web.Response:
    """A proactive message: the body of `POST /v1/outbound` (the id is the admin area's own)."""
    body = await json_body(request)
    body.pop("message_id", None)
    sent = await outbound.send(request.app, request[ACTOR], body)
    return json_response({"sent": {"message_id": sent.message_id, "conversation_id": sent.conversation_id}})


async def release(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    await operations.release(request.app, actor, body.get("conversation_id"))
    return json_response({"released": body["conversation_id"]})


async def knowledge_view(request: web.Request) -> web.Response:
    """The unanswered questions, suggested phrasings, taught phrasings and the base's entries."""
    return json_response((await teaching.view(request.app)).to_dict())


async def phrasings_yaml(request: web.Request) -> web.Response:
    return knowledge.yaml_download(await teaching.export(request.app))


async def attach(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    phrasing = await teaching.attach(request.app, actor, body.get("question"), body.get("entry_id"))
    return json_response({"taught": {"entry_id": body["entry_id"], "phrasing": phrasing}})


async def dismiss(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    await teaching.dismiss(request.app, actor, body.get("question"))
    return json_response({"dismissed": body["question"]})


async def accept(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    phrasing = await teaching.accept(request.app, actor, body.get("entry_id"), body.get("question"))
    return json_response({"taught": {"entry_id": body["entry_id"], "phrasing": phrasing}})


async def dismiss_suggestion(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    await teaching.dismiss_suggestion(request.app, actor, body.get("entry_id"), body.get("question"))
    return json_response({"dismissed": {"entry_id": body["entry_id"], "question": body["question"]}})


async def remove_phrasing(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    body = await json_body(request)
    await teaching.remove(request.app, actor, body.get("entry_id"), body.get("phrasing"))
    return json_response({"removed": {"entry_id": body["entry_id"], "phrasing": body["phrasing"]}})
