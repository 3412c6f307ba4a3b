"""`GET /v1/messages/{message_id}`: where an accepted message stands, for clients that posted it
with `wait=0` (or lost their event stream) and want its reply without re-posting it. Web messages
only with the token of the conversation the message belongs to; a proactive message
(`POST /v1/outbound`, whose sender holds an API key, not a conversation) without one, with its
`delivery` (shared/receipts.py)."""

from __future__ import annotations

from aiohttp import web

from services.gateway.api_keys import caller_key
from services.gateway.intake import unavailable
from services.gateway.keys import INTAKE, RECEIPTS, TOKENS
from services.gateway.validation import check_id
from services.gateway.web_conversations import (
    SCOPE_RE,
    TOKEN_HEADER,
    forbidden,
    presented_token,
    public_answer,
    public_id,
    scoped,
)
from shared.messages import ReplyMessage
from shared.outbound import ID_PREFIX
from shared.store import REDIS_ERRORS
from shared.web import Problem, json_response


def not_open() -> Problem:
    """One answer for an unknown id and for a token that does not open the message: the user
    scope in a token is no secret, so telling them apart would tell which ids exist."""
    return Problem(
        403,
        f"{TOKEN_HEADER}: opens no message with this message_id (the conversation_token of the "
        "message's conversation is needed; unknown ids and those older than 24 hours answer alike)",
    )


async def message_status(request: web.Request) -> web.Response:
    message_id = check_id("message_id", request.match_info["message_id"])
    token = presented_token(request)
    if token is None:
        return await _proactive(request, message_id)
    scope, _, _ = (token or "").partition(".")
    if token is None or not SCOPE_RE.match(scope):
        raise forbidden()
    found = await request.app[INTAKE].lookup(scoped(scope, message_id))
    # An unknown id is checked against a conversation of its own name: the same work, the same
    # answer, as a token that is not this message's.
    conversation = scoped(scope, message_id) if found is None else _conversation_of(found)
    try:
        opened = await request.app[TOKENS].verify(conversation, token, caller_key(request))
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
    if found is None or not opened:
        raise not_open()
    if isinstance(found, ReplyMessage) and found.silenced:
        # The bot stayed silent: the conversation is with a human agent, who answers it.
        return json_response(
            {
                "message_id": message_id,
                "conversation_id": public_id(conversation),
                "status": "handed_off",
                "conversation_token": token,
            }
        )
    if isinstance(found, ReplyMessage):
        return json_response(public_answer(found, token))
    return json_response(
        {
            "message_id": message_id,
            "conversation_id": public_id(conversation),
            "status": "queued",
            "conversation_token": token,
        }
    )


def _conversation_of(found: ReplyMessage | str) -> str:
    return found.conversation_id if isinstance(found, ReplyMessage) else found


async def _proactive(request: web.Request, message_id: str) -> web.Response:
    try:
        found = await request.app[RECEIPTS].proactive(ID_PREFIX + message_id)
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
    if found is None:
        raise not_open()  # a web message's state is its conversation's business
    delivery = found["delivery"]
    status = "queued" if delivery is None else delivery["status"]
    return json_response({"message_id": message_id, **found, "status": status})
