"""Proactive messages (SPEC 4 `POST /v1/outbound`): what a request may hold, whom it may reach, and
the reply it becomes. Shared by the gateway's API and the admin area's form, so both refuse the
same things in the same words.

A proactive message travels as a `ReplyMessage` (kind `agent`, engine `outbound`) on the channel's
durable delivery queue, so it is delivered exactly like a reply: retried, split, dead-lettered,
sent once per message id (services/gateway/delivery/). WhatsApp's rule: free text only within 24
hours of the customer's last message, an approved template at any time. A customer who opted out
(shared/contacts.py) gets nothing until they write again.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.contacts import Contact
from shared.messages import Channel, ReplyContent, ReplyMessage, Template
from shared.settings import Settings
from shared.web import Problem

FIELDS = frozenset({"channel", "to", "text", "template", "message_id"})
TEMPLATE_FIELDS = frozenset({"name", "language", "components"})
CHANNELS: tuple[Channel, ...] = ("whatsapp", "telegram")
MAX_ID = 128
MAX_TEXT = 4096
MAX_COMPONENTS_BYTES = 8192
# Internal ids of proactive messages live apart from every channel's own (no wamid, no update).
ID_PREFIX = "outbound:"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Also the OpenAPI document's patterns (services/gateway/openapi_outbound.py): checked with
# `fullmatch`, so they mean what they mean in the document's (ECMA) dialect.
WHATSAPP_TO_PATTERN = r"^\+?[0-9]{6,20}$"
TELEGRAM_TO_PATTERN = r"^-?[0-9]{1,16}$"  # Telegram ids have at most 52 bits
# Meta's template names: lower-case letters, digits and underscores; languages like "pt_BR", "en".
TEMPLATE_NAME_PATTERN = r"^[a-z0-9_]{1,512}$"
LANGUAGE_PATTERN = r"^[a-z]{2,3}(?:_[A-Za-z]{2,4})?$"
TELEGRAM_MAX_ID = 2**53
_WHATSAPP_TO = re.compile(WHATSAPP_TO_PATTERN)
_TELEGRAM_TO = re.compile(TELEGRAM_TO_PATTERN)
_TEMPLATE_NAME = re.compile(TEMPLATE_NAME_PATTERN)
_LANGUAGE = re.compile(LANGUAGE_PATTERN)


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    channel: Channel
    to: str
    text: str
    template: Template | None
    message_id: str

    @property
    def internal_id(self) -> str:
        return ID_PREFIX + self.message_id


def invalid(detail: str) -> Problem:
    return Problem(400, detail, title="Invalid request")


def refused(detail: str) -> Problem:
    return Problem(422, detail, title="Not sendable")


def parse_outbound(data: dict[str, Any]) -> OutboundRequest:
    """A request body, checked field by field (400 naming the field)."""
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise invalid(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(FIELDS))})")
    channel = data.get("channel")
    if channel not in CHANNELS:
        raise invalid('channel: must be "whatsapp" or "telegram"')
    to = _to(channel, data.get("to"))
    if ("text" in data) == ("template" in data):
        raise invalid("text, template: exactly one of them is required")
    text = _text(data["text"]) if "text" in data else ""
    template = _template(data["template"]) if "template" in data else None
    if template is not None and channel != "whatsapp":
        raise invalid("template: templates are WhatsApp's; send `text` on Telegram")
    message_id = data.get("message_id", uuid.uuid4().hex)
    if not isinstance(message_id, str) or not message_id.strip() or len(message_id) > MAX_ID:
        raise invalid(f"message_id: must be a string of 1-{MAX_ID} characters, not blank")
    if _CONTROL.search(message_id):
        raise invalid("message_id: must not contain control characters")
    return OutboundRequest(channel, to, text, template, message_id)


def _to(channel: Channel, value: Any) -> str:
    if channel == "telegram" and isinstance(value, int | float) and not isinstance(value, bool):
        if not (float(value).is_integer() and abs(value) <= TELEGRAM_MAX_ID):
            raise invalid(f"to: a chat id must be a whole number within ±{TELEGRAM_MAX_ID}")
        value = str(int(value))
    pattern = _WHATSAPP_TO if channel == "whatsapp" else _TELEGRAM_TO
    if not isinstance(value, str) or not pattern.fullmatch(value):
        what = "the customer's phone number, digits with the country code" if channel == "whatsapp" else "a chat id"
        raise invalid(f"to: required, {what}")
    return value.lstrip("+")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid("text: must be a non-blank string")
    if len(value) > MAX_TEXT:
        raise invalid(f"text: must be at most {MAX_TEXT} characters (got {len(value)})")
    return value


def _template(value: Any) -> Template:
    if not isinstance(value, dict):
        raise invalid("template: must be an object with name, language and optional components")
    unknown = sorted(set(value) - TEMPLATE_FIELDS)
    if unknown:
        raise invalid(f"template.{unknown[0]}: unknown field (allowed: {', '.join(sorted(TEMPLATE_FIELDS))})")
    name, language = value.get("name"), value.get("language")
    if not isinstance(name, str) or not _TEMPLATE_NAME.fullmatch(name):
        raise invalid("template.name: required, the approved template's name (a-z, 0-9 and _)")
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        raise invalid('template.language: required, the template\'s language code, like "pt_BR" or "en"')
    components = value.get("components", [])
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise invalid("template.components: must be an array of objects (the Graph API's components)")
    if len(orjson.dumps(components)) > MAX_COMPONENTS_BYTES:
        raise invalid(f"template.components: must be at most {MAX_COMPONENTS_BYTES} bytes serialised")
    return Template(name, language, tuple(components))


def check_sendable(request: OutboundRequest, contact: Contact, settings: Settings, now_s: float) -> None:
    """422 when the channel is not configured, the customer opted out, or WhatsApp free text falls
    outside the 24-hour window."""
    enabled = settings.whatsapp_enabled if request.channel == "whatsapp" else settings.telegram_enabled
    if not enabled:
        raise refused(f"channel: {request.channel} is not configured here, so nothing can be sent on it")
    if contact.opted_out:
        raise refused(
            "to: this customer opted out of proactive messages (they wrote an opt-out command such as"
            ' "parar" or "stop"); nothing is sent until they write again'
        )
    if request.channel != "whatsapp":
        return
    if request.template is None and not contact.within_window(now_s):
        raise refused(
            "text: WhatsApp allows free text only within 24 hours of the customer's last message"
            f" ({_last(contact)}); outside that window send an approved template (`template`)"
        )
    if not (contact.phone_number_id or settings.whatsapp_phone_number_id):
        raise refused(
            "to: this customer never wrote to the business and WHATSAPP_PHONE_NUMBER_ID is not set,"
            " so there is no number to send from"
        )


def _last(contact: Contact) -> str:
    if not contact.last_in_ms:
        return "they have not written to the business"
    when = datetime.fromtimestamp(contact.last_in_ms / 1000, UTC).isoformat(timespec="minutes")
    return f"their last was at {when.replace('+00:00', 'Z')}"


def conversation_of(request: OutboundRequest, phone_number_id: str) -> str:
    """The customer's conversation, the one their own messages are in (services/gateway/handlers/)."""
    if request.channel == "whatsapp":
        return f"whatsapp:{phone_number_id}:{request.to}"
    return f"telegram:{request.to}"


def outbound_reply(request: OutboundRequest, contact: Contact, settings: Settings, gateway_id: str) -> ReplyMessage:
    """The message that travels to the channel's delivery queue."""
    if request.channel == "whatsapp":
        phone_number_id = contact.phone_number_id or settings.whatsapp_phone_number_id
        metadata: dict[str, Any] = {"phone_number_id": phone_number_id, "to": request.to}
    else:
        phone_number_id, metadata = "", {"chat_id": int(request.to)}
    return ReplyMessage(
        message_id=request.internal_id,
        conversation_id=conversation_of(request, phone_number_id),
        user_id=request.to,
        channel=request.channel,
        reply=ReplyContent(
            text=request.text, engine="outbound", confidence=1.0, kind="agent", template=request.template
        ),
        latency_ms=0.0,
        gateway_id=gateway_id,
        metadata=metadata,
    )


def log_entry(reply: ReplyMessage, sender: str) -> dict[str, Any]:
    """The conversation log's entry of a proactive message (the admin conversation view)."""
    now = time.time()
    content = reply.reply
    entry: dict[str, Any] = {
        "message_id": reply.message_id,
        "kind": "outbound",
        "sender": sender,
        "channel": reply.channel,
        "user_id": reply.user_id,
        "text": "",
        "accepted_at": now,
        "replied_at": now,
        "reply": content.to_dict(),
        "latency_ms": None,
        "queue_wait_ms": None,
        "processing_ms": None,
    }
    if content.template is not None:
        entry["template"] = content.template.to_dict()
        entry["reply"]["text"] = f"[template {content.template.name} ({content.template.language})]"
    return entry
