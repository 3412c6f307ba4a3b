"""`GET /v1/messages/{message_id}`: where an accepted message stands, for clients that posted it
with `wait=0` (or lost their event stream) and want its reply without re-posting it."""

from __future__ import annotations

from aiohttp import web

from services.gateway.keys import INTAKE
from services.gateway.validation import MAX_ID, bad_request
from shared.messages import ReplyMessage
from shared.web import Problem, json_response


async def message_status(request: web.Request) -> web.Response:
    message_id = request.match_info["message_id"]
    if not message_id.strip() or len(message_id) > MAX_ID:
        raise bad_request(f"message_id: must be 1-{MAX_ID} characters, not blank")
    found = await request.app[INTAKE].lookup(message_id)
    if found is None:
        raise Problem(404, "message_id: no accepted message has this id (or it is older than 24 hours)")
    if isinstance(found, ReplyMessage) and found.silenced:
        # The bot stayed silent: the conversation is with a human agent, who answers it.
        return json_response(
            {"message_id": message_id, "conversation_id": found.conversation_id, "status": "handed_off"}
        )
    if isinstance(found, ReplyMessage):
        return json_response(found.public_dict())
    return json_response({"message_id": message_id, "conversation_id": found, "status": "queued"})
