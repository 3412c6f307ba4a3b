"""WhatsApp Cloud API webhook (SPEC section 4): Meta's verification handshake and the signed
notifications that carry customers' messages.

A notification is answered as soon as its messages are durably queued: Meta retries a slow or
failed webhook for days, so the answer must be quick, and a 503 (broker down) makes it retry.
Text becomes an inbound message whose id is the `wamid`, so Meta's retries are recognised; so do
a tap on one of our reply buttons or list rows (the option's id, and its title as the text), a
template's quick-reply button (its text), and audio, images and documents (the
media id goes along, never the bytes: the worker fetches and reads them). Delivery statuses of our
own messages (sent, delivered, read, failed with its error code) are recorded against the message
whose send returned their wamid (services/gateway/statuses.py); any other kind of message
(sticker, location, ...) gets a short "cannot read this, please write" reply through the same
outbound delivery. A template's opt-out quick-reply button (payload `opt_out` or an opt-out
word) comes as the opt-out option (shared/contacts.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

from aiohttp import web

from services.gateway.bodies import read_body
from services.gateway.intake import unavailable
from services.gateway.keys import CONTACTS, INTAKE, SETTINGS
from services.gateway.statuses import record_statuses
from services.gateway.validation import CONTROL_RE, bad_request, display_name, parse_json_object
from shared.contacts import is_opt_out
from shared.messages import OPT_OUT_OPTION, Attachment, InboundMessage, MediaKind, ReplyContent, ReplyMessage
from shared.store import REDIS_ERRORS
from shared.web import Problem, json_response

SIGNATURE_HEADER = "X-Hub-Signature-256"
# Kinds that need no answer at all: a reaction to a message, a system notice (number changed),
# the first opening of a chat.
SILENT_TYPES = frozenset({"reaction", "system", "request_welcome"})

TEXT_ONLY = {
    "pt": "Desculpe, não consigo ler esse tipo de mensagem. Pode escrever sua pergunta?",
    "en": "Sorry, I cannot read that kind of message. Could you type your question?",
    "es": "Lo siento, no puedo leer ese tipo de mensaje. ¿Puedes escribir tu pregunta?",
}
MEDIA_TYPES: frozenset[MediaKind] = frozenset({"audio", "image", "document"})


def text_only_reply(message: InboundMessage, *, language: str = "pt") -> ReplyMessage:
    """The polite answer to a message the bot cannot read (pt-BR unless the channel says otherwise)."""
    return ReplyMessage(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        user_id=message.user_id,
        channel=message.channel,
        # `smalltalk` like the worker's polite reply to media it cannot handle: nothing was answered.
        reply=ReplyContent(
            text=TEXT_ONLY.get(language, TEXT_ONLY["pt"]), engine="channel", confidence=1.0, kind="smalltalk"
        ),
        latency_ms=0.0,
        gateway_id=message.gateway_id,
        metadata=message.metadata,
    )


async def verify(request: web.Request) -> web.Response:
    """`GET /webhooks/whatsapp`: echo `hub.challenge` when Meta presents our verify token."""
    expected = request.app[SETTINGS].whatsapp_verify_token
    presented = request.query.get("hub.verify_token", "")
    if request.query.get("hub.mode") != "subscribe":
        raise Problem(403, "hub.mode: must be 'subscribe'")
    if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Problem(403, "hub.verify_token: does not match WHATSAPP_VERIFY_TOKEN")
    return web.Response(text=request.query.get("hub.challenge", ""), content_type="text/plain")


def check_signature(header: str | None, body: bytes, secret: str) -> None:
    if not header:
        raise Problem(401, f"{SIGNATURE_HEADER}: header is required")
    scheme, _, digest = header.partition("=")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if scheme != "sha256" or not hmac.compare_digest(digest.strip().lower().encode(), expected.encode()):
        raise Problem(401, f"{SIGNATURE_HEADER}: does not match the body signed with WHATSAPP_APP_SECRET")


async def receive(request: web.Request) -> web.Response:
    """`POST /webhooks/whatsapp`: signature first, then every message of the notification."""
    settings = request.app[SETTINGS]
    body = await read_body(request)
    check_signature(request.headers.get(SIGNATURE_HEADER), body, settings.whatsapp_app_secret)
    payload = parse_json_object(body)
    items = parse_notification(payload, settings.instance_id)
    outcomes = await request.app[INTAKE].accept_all(items)
    try:
        # After queueing: a failure here makes Meta retry, and the retry records what this missed.
        await request.app[CONTACTS].seen_all(items)
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
    await record_statuses(request.app, payload)
    duplicates = sum(outcome.duplicate for outcome in outcomes)
    return json_response({"accepted": len(outcomes) - duplicates, "duplicates": duplicates})


def parse_notification(payload: dict[str, Any], gateway_id: str) -> list[InboundMessage | ReplyMessage]:
    """The messages of one notification, in order; statuses and other fields are skipped."""
    items: list[InboundMessage | ReplyMessage] = []
    for e, entry in enumerate(_objects(payload, "entry", "entry")):
        for c, change in enumerate(_objects(entry, "changes", f"entry[{e}].changes")):
            path = f"entry[{e}].changes[{c}]"
            value = _object(change, "value", f"{path}.value")
            if change.get("field") != "messages" or not value.get("messages"):
                continue
            phone_number_id = _id(_object(value, "metadata", f"{path}.value.metadata"), "phone_number_id", path)
            names = _profile_names(value)
            for m, message in enumerate(_objects(value, "messages", f"{path}.value.messages")):
                item = _item(message, f"{path}.value.messages[{m}]", phone_number_id, gateway_id)
                if isinstance(item, InboundMessage) and names.get(item.user_id):
                    item = dataclasses.replace(item, metadata={**item.metadata, "name": names[item.user_id]})
                if item is not None:
                    items.append(item)
    return items


def _profile_names(value: dict[str, Any]) -> dict[str, str]:
    """The senders' WhatsApp profile names (`value.contacts[].profile.name` by `wa_id`), shown to
    agents in the admin inbox. Only a display aid: a contact of an unexpected shape is skipped."""
    names: dict[str, str] = {}
    for contact in value.get("contacts") or ():
        profile = contact.get("profile") if isinstance(contact, dict) else None
        name = profile.get("name") if isinstance(profile, dict) else None
        if isinstance(name, str) and isinstance(contact.get("wa_id"), str):
            names[contact["wa_id"]] = display_name(name)
    return names


def _item(
    message: dict[str, Any], path: str, phone_number_id: str, gateway_id: str
) -> InboundMessage | ReplyMessage | None:
    kind = message.get("type")
    if kind in SILENT_TYPES:
        return None
    sender = _id(message, "from", path)
    inbound = InboundMessage(
        message_id=_id(message, "id", path),  # the wamid: Meta's retries carry the same one
        conversation_id=f"whatsapp:{phone_number_id}:{sender}",
        user_id=sender,
        text="",
        channel="whatsapp",
        metadata={"phone_number_id": phone_number_id, "to": sender},
        gateway_id=gateway_id,
    )
    if kind == "text":
        return dataclasses.replace(
            inbound, text=_text(_object(message, "text", f"{path}.text"), "body", f"{path}.text")
        )
    if kind == "interactive":  # a tap on a reply button or a list row we sent: the option's id and title
        interactive = _object(message, "interactive", f"{path}.interactive")
        choice = interactive.get("type")
        if choice in ("button_reply", "list_reply"):
            where = f"{path}.interactive.{choice}"
            tapped = _object(interactive, choice, where)
            return dataclasses.replace(inbound, option=_id(tapped, "id", where), text=_text(tapped, "title", where))
    if kind == "button":  # a template's quick-reply button: no option of ours, its text is the message
        button = _object(message, "button", f"{path}.button")
        payload = button.get("payload")
        opt_out = isinstance(payload, str) and (payload.casefold() == OPT_OUT_OPTION or is_opt_out(payload))
        return dataclasses.replace(inbound, text=_text(button, "text", path), option=OPT_OUT_OPTION if opt_out else "")
    for media in MEDIA_TYPES:
        if kind == media:
            return dataclasses.replace(inbound, **_media(message, media, f"{path}.{media}"))
    return text_only_reply(inbound)


def _media(message: dict[str, Any], kind: MediaKind, path: str) -> dict[str, Any]:
    """The attachment (and caption) of an audio, image or document message."""
    content = _object(message, kind, path)
    caption = content.get("caption")
    filename = content.get("filename")
    attachment = Attachment(
        kind=kind,
        media_id=_text(content, "id", path),
        mime_type=str(content.get("mime_type") or ""),
        voice=content.get("voice") is True,
        filename=filename if isinstance(filename, str) else "",
    )
    return {"attachment": attachment, "text": caption if isinstance(caption, str) else ""}


def _objects(data: dict[str, Any], name: str, path: str) -> list[dict[str, Any]]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise bad_request(f"{path}: must be an array")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise bad_request(f"{path}[{index}]: must be an object")
    return value


def _object(data: dict[str, Any], name: str, path: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise bad_request(f"{path}: must be an object")
    return value


def _id(data: dict[str, Any], name: str, path: str) -> str:
    value = _text(data, name, path)
    if CONTROL_RE.search(value):
        raise bad_request(f"{path}.{name}: must not contain control characters")
    return value


def _text(data: dict[str, Any], name: str, path: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{path}.{name}: must be a non-empty string")
    return value
