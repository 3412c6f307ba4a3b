"""`POST /v1/messages`: the web and server-to-server channel.

The caller's ids are scoped to its user inside the system (services/gateway/web_conversations.py);
answers show them as sent, with the conversation's token.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from services.gateway.api_keys import caller_key
from services.gateway.bodies import read_body
from services.gateway.intake import unavailable
from services.gateway.keys import INTAKE, ROUTER, SETTINGS, STORE, TOKENS
from services.gateway.ratelimit import ADDRESS_CHARGE
from services.gateway.validation import parse_json_object, parse_message, parse_wait
from services.gateway.web_conversations import public_answer, public_id, scoped, user_scope
from shared.broker import BROKER_ERRORS
from shared.commands import is_reset
from shared.messages import InboundMessage, ReplyMessage
from shared.store import REDIS_ERRORS
from shared.web import Problem, json_response


async def _token(request: web.Request, conversation: str) -> str:
    """A fresh token of the conversation for this caller's key."""
    try:
        return await request.app[TOKENS].issue(conversation, caller_key(request))
    except REDIS_ERRORS:
        raise unavailable("Redis") from None


async def _end_tokens(request: web.Request, conversation: str) -> None:
    """`/reset`: every token of the conversation issued until now ends. Run once its id is claimed,
    before it is queued: a /reset refused before its claim (429, Redis or the broker down) or
    repeated ends nothing; one accepted ends them before its reply can reach a stream they opened."""
    try:
        await request.app[TOKENS].end_all(conversation)
    except REDIS_ERRORS:
        raise unavailable("Redis") from None


def _queued(message: InboundMessage, conversation: str, token: str, duplicate: bool) -> web.Response:
    body: dict[str, Any] = {
        "message_id": public_id(message.message_id),
        "conversation_id": public_id(conversation),
        "status": "queued",
        "conversation_token": token,
    }
    if duplicate:
        body["duplicate"] = True
    return json_response(body, status=202)


def _answered(reply: ReplyMessage, token: str, duplicate: bool) -> web.Response:
    body = public_answer(reply, token)
    if duplicate:
        body["duplicate"] = True
    return json_response(body, status=200)


async def _read_message(request: web.Request) -> tuple[InboundMessage, float]:
    if request.content_type != "application/json":
        raise Problem(415, f"Content-Type: must be application/json (got {request.content_type or 'none'})")
    wait = parse_wait(request.query.get("wait"))
    fields = parse_message(parse_json_object(await read_body(request)))
    scope = user_scope(fields.user_id)
    inbound = InboundMessage(
        message_id=scoped(scope, fields.message_id),
        conversation_id=scoped(scope, fields.conversation_id),
        user_id=fields.user_id,
        text=fields.text,
        channel="web",
        metadata=fields.metadata,
        gateway_id=request.app[SETTINGS].instance_id,
        option=fields.option,
    )
    return inbound, wait


async def post_message(request: web.Request) -> web.Response:
    message, wait = await _read_message(request)
    # Known before anything is accepted: an accepted message is always answered with its token
    # (once the tokens' secret is known, issuing one asks Redis nothing).
    token = await _token(request, message.conversation_id)
    reset = is_reset(message.text)
    router = request.app[ROUTER]
    # The waiter exists before the publish, so a reply faster than this handler is not missed.
    with router.waiter(message.message_id) as future:
        # The client address's rate limit is taken with the claim (the middleware left it to us).
        outcome = await request.app[INTAKE].accept(
            message,
            address=request.get(ADDRESS_CHARGE),
            before_publish=(lambda: _end_tokens(request, message.conversation_id)) if reset else None,
        )
        if outcome.duplicate_of is not None:
            return await _answer_duplicate(request, message, outcome.duplicate_of, wait, future)
        if reset:  # the earlier tokens ended: the answer brings one issued after that
            token = await _token(request, message.conversation_id)
        if wait == 0:
            return _queued(message, message.conversation_id, token, duplicate=False)
        reply = await _wait(future, wait)
        if reply is None:
            reply = await _stored_reply(request, message.message_id)
    if reply is None or reply.silenced:
        # Not answered yet; or never by the bot: a human has the conversation and answers it.
        return _queued(message, message.conversation_id, token, duplicate=False)
    return _answered(reply, token, duplicate=False)


async def _answer_duplicate(
    request: web.Request,
    message: InboundMessage,
    conversation_id: str,
    wait: float,
    future: asyncio.Future[ReplyMessage],
) -> web.Response:
    """A repeated id answers as the original did, queueing nothing; it may wait like the original."""
    reply = await _stored_reply(request, message.message_id)
    if reply is None and wait > 0:
        # The original may have come through another gateway: follow its conversation meanwhile.
        try:
            async with request.app[ROUTER].stream(conversation_id):
                reply = await _stored_reply(request, message.message_id) or await _wait(future, wait)
        except BROKER_ERRORS:
            raise unavailable("the message broker") from None
    # The token of the conversation the original was accepted for.
    token = await _token(request, conversation_id)
    if reply is None or reply.silenced:
        return _queued(message, conversation_id, token, duplicate=True)
    return _answered(reply, token, duplicate=True)


async def _wait(future: asyncio.Future[ReplyMessage], seconds: float) -> ReplyMessage | None:
    """The reply, or None after `seconds`. No shield: the future is this request's own waiter,
    never awaited again, and a cancelled one is skipped by the dispatch (`done()`)."""
    try:
        async with asyncio.timeout(seconds):
            return await future
    except TimeoutError:
        return None


async def _stored_reply(request: web.Request, message_id: str) -> ReplyMessage | None:
    try:
        # Silenced replies too: a repeated id of a message a human has answers at once (202).
        return await request.app[STORE].stored_reply(message_id, silenced=True)
    except REDIS_ERRORS:
        return None
