"""The admin area's proactive messages: an operator sends one to a WhatsApp or Telegram customer
(the form at /admin/outbound, or `POST /admin/api/outbound`), checked by the same rules as
`POST /v1/outbound` (shared/outbound.py), sent through the same delivery, logged in the
customer's conversation, and audited with its outcome (refused ones too). The conversation view
shows each message's delivery status (shared/receipts.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from services.monitor.audit import Actor
from services.monitor.keys import AUDIT, BROKER, SETTINGS, STORE
from services.monitor.problems import unreachable
from shared.broker import BROKER_ERRORS
from shared.contacts import ContactBook
from shared.messages import ReplyMessage
from shared.outbound import check_sendable, log_entry, outbound_reply, parse_outbound
from shared.receipts import Receipts
from shared.store import REDIS_ERRORS
from shared.web import Problem

UNAVAILABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, *BROKER_ERRORS)
ACTION = "send_outbound"


def request_of(fields: dict[str, Any]) -> dict[str, Any]:
    """The body of `POST /v1/outbound` from the form's fields: text, or a template (its components
    as JSON) when a template name is given."""
    body: dict[str, Any] = {"channel": fields.get("channel", ""), "to": fields.get("to", "")}
    name = str(fields.get("template_name") or "").strip()
    if not name:
        body["text"] = fields.get("text", "")
        return body
    template: dict[str, Any] = {"name": name, "language": str(fields.get("template_language") or "").strip()}
    raw = str(fields.get("template_components") or "").strip()
    if raw:
        try:
            template["components"] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Problem(400, "template.components: not valid JSON") from None
    body["template"] = template
    return body


async def send(app: web.Application, actor: Actor, body: dict[str, Any]) -> ReplyMessage:
    """Check, queue with confirm, log and audit one proactive message; raises Problem (400, 422, 503)."""
    settings, store, audit = app[SETTINGS], app[STORE], app[AUDIT]
    target = f"{body.get('channel', '')}:{body.get('to', '')}"[:200]
    try:
        request = parse_outbound({**body, "message_id": uuid.uuid4().hex})
        contacts = ContactBook(store.redis, store.names)
        contact = await contacts.get(request.channel, request.to)
        check_sendable(request, contact, settings, contacts.clock.now())
        reply = outbound_reply(request, contact, settings, settings.instance_id)
        await app[BROKER].publish_reply(reply)
        await Receipts(store.redis, store.names, settings.retention_s).addressed(reply)
        await store.log_conversation(reply.conversation_id, log_entry(reply, actor.name))
    except Problem as problem:
        await audit.record(actor, ACTION, target, "refused", problem.detail)
        raise
    except UNAVAILABLE as exc:
        await audit.record(actor, ACTION, target, "failed", str(exc) or type(exc).__name__)
        raise unreachable("RabbitMQ or Redis", "nothing was sent") from None
    # What and to whom, never the words (they are in the conversation log, with its TTL).
    content = reply.reply
    what = f"template {content.template.name}" if content.template else f"{len(content.text)} chars"
    await audit.record(actor, ACTION, reply.conversation_id, "ok", f"{reply.message_id}: {what}")
    return reply


async def deliveries(app: web.Application, entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The delivery status of every logged message that has one, by message id (empty when Redis fails)."""
    ids = [str(entry["message_id"]) for entry in entries if entry.get("message_id")]
    if not ids:
        return {}
    store = app[STORE]
    try:
        return await Receipts(store.redis, store.names, app[SETTINGS].retention_s).describe_many(ids)
    except REDIS_ERRORS:
        return {}
