"""`POST /v1/outbound`: a proactive message to a WhatsApp or Telegram customer (SPEC 4).

Its fields checked (shared/outbound.py), it is claimed under its id; only then, and only for an
id not accepted before, are the channel, the customer's opt-out and WhatsApp's 24-hour window
checked (a refusal gives the claim back), and it is queued with confirm on the channel's delivery
queue like any reply (`Intake.answer_directly`). So a repeated `message_id` answers as the original
did, whatever changed since (SPEC 4: idempotent by `message_id`), queues nothing and is sent once;
two at once wait for one claim. Recorded in the customer's conversation log and in its receipt
(where it went), which `GET /v1/messages/{id}` reads.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from services.gateway.bodies import read_body
from services.gateway.intake import unavailable
from services.gateway.keys import CONTACTS, INTAKE, RECEIPTS, SETTINGS, STORE
from services.gateway.ratelimit import ADDRESS_CHARGE
from services.gateway.validation import parse_json_object
from shared.outbound import check_sendable, log_entry, outbound_reply, parse_outbound
from shared.store import REDIS_ERRORS
from shared.web import Problem, json_response

log = logging.getLogger(__name__)


async def post_outbound(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise Problem(415, f"Content-Type: must be application/json (got {request.content_type or 'none'})")
    outbound = parse_outbound(parse_json_object(await read_body(request)))
    settings, contacts = request.app[SETTINGS], request.app[CONTACTS]
    try:
        contact = await contacts.get(outbound.channel, outbound.to)
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
    reply = outbound_reply(outbound, contact, settings, settings.instance_id)

    async def sendable() -> None:
        check_sendable(outbound, contact, settings, contacts.clock.now())

    # The client address's rate limit is taken with the claim: a 429 means nothing was queued.
    outcome = await request.app[INTAKE].answer_directly(
        reply, address=request.get(ADDRESS_CHARGE), before_publish=sendable
    )
    body = {"message_id": outbound.message_id, "status": "queued"}
    if outcome.duplicate:
        return json_response({**body, "duplicate": True}, status=202)
    try:
        await asyncio.gather(
            request.app[RECEIPTS].addressed(reply),
            request.app[STORE].log_conversation(reply.conversation_id, log_entry(reply, "api")),
        )
    except REDIS_ERRORS as exc:
        # Queued already, so it goes out; only its record in the operators' views is missing.
        log.error("outbound %s queued but not recorded: %s", reply.message_id, exc)
    return json_response(body, status=202)
