"""`GET /v1/messages/{message_id}`: where an accepted message stands, for clients that posted it
with `wait=0` (or lost their event stream) and want its reply without re-posting it. Web messages
only with the token of the conversation the message belongs to; a proactive message
(`POST /v1/outbound`, whose sender holds an API key, not a conversation) without one, with its
`delivery` (shared/receipts.py)."""

from __future__ import annotations

from aiohttp import web

from services.gateway.intake import unavailable
from services.gateway.keys import INTAKE, RECEIPTS, TOKENS
from services.gateway.validation import check_id
from services.gateway.web_conversations import SCOPE_RE, forbidden, presented_token, public_answer, public_id, scoped
from shared.messages import ReplyMessage
from shared.outbound import ID_PREFIX
from shared.store import REDIS_ERRORS
from shared.web import Problem, json_response


async def message_status(request: web.Request) -> web.Response:
    message_id = check_id("message_id", request.match_info["message_id"])
    token = presented_token(request)
    if token is None:
        return await _proactive(request, message_id)
    scope, _, _ = (token or "").partition(".")
    if token is None or not SCOPE_RE.match(scope):
        raise forbidden()
    found = await request.app[INTAKE].lookup(scoped(scope, message_id))
    if found is None:
        raise Problem(404, "message_id: no accepted message has this id (or it is older than 24 hours)")
    conversation = found.conversation_id if isinstance(found, ReplyMessage) else found
    try:
        if not await request.app[TOKENS].verify(conversation, token):
            raise forbidden()
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
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


async def _proactive(request: web.Request, message_id: str) -> web.Response:
    try:
        found = await request.app[RECEIPTS].proactive(ID_PREFIX + message_id)
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
    if found is None:
        raise forbidden()  # a web message's state is its conversation's business
    delivery = found["delivery"]
    status = "queued" if delivery is None else delivery["status"]
    return json_response({"message_id": message_id, **found, "status": status})
