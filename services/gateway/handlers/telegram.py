"""Telegram Bot API webhook (SPEC section 4): updates pushed by `setWebhook`.

Telegram proves it is the caller with the `secret_token` given to `setWebhook`, echoed in
`X-Telegram-Bot-Api-Secret-Token`. A text message becomes an inbound message whose id comes from
the `update_id` (Telegram re-sends an update until it gets a 2xx, always with the same id); one
conversation per chat, private or group. Other updates (edits, joins, ...) are acknowledged; a
private chat's non-text message (photo, voice, ...) gets the short "text only, please" reply.
"""

from __future__ import annotations

import hmac
from typing import Any, TypeVar

from aiohttp import web

from services.gateway.handlers.whatsapp import read_webhook_body, text_only_reply
from services.gateway.keys import INTAKE, SETTINGS
from services.gateway.validation import bad_request, parse_json_object
from shared.messages import InboundMessage, ReplyMessage
from shared.web import Problem, json_response

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
T = TypeVar("T")
MAX_ID = 2**53


async def receive(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    presented = request.headers.get(SECRET_HEADER, "")
    if not presented:
        raise Problem(401, f"{SECRET_HEADER}: header is required")
    if not hmac.compare_digest(presented.encode(), settings.telegram_secret_token.encode()):
        raise Problem(401, f"{SECRET_HEADER}: does not match TELEGRAM_SECRET_TOKEN")
    item = parse_update(parse_json_object(await read_webhook_body(request)), settings.instance_id)
    if item is None:
        return json_response({"accepted": 0, "duplicates": 0})
    [outcome] = await request.app[INTAKE].accept_all([item])
    return json_response({"accepted": int(not outcome.duplicate), "duplicates": int(outcome.duplicate)})


def parse_update(update: dict[str, Any], gateway_id: str) -> InboundMessage | ReplyMessage | None:
    """The message to queue for an Update, if any. Every field used is checked first, exactly as
    the document at /openapi.json describes it, whichever way the update then goes."""
    update_id = _required(update, "update_id", int, "update_id")
    if "message" not in update:
        return None  # edited messages, channel posts, member changes, ...: nothing to answer
    message = _required(update, "message", dict, "message")
    chat = _required(message, "chat", dict, "message.chat")
    chat_id = _required(chat, "id", int, "message.chat.id")
    chat_type = _optional(chat, "type", str, "message.chat.type")
    sender = _optional(message, "from", dict, "message.from") or {}
    sender_id = _optional(sender, "id", int, "message.from.id")
    language = _optional(sender, "language_code", str, "message.from.language_code") or ""
    text = _optional(message, "text", str, "message.text") or ""
    inbound = InboundMessage(
        message_id=f"telegram:{update_id}",
        conversation_id=f"telegram:{chat_id}",
        user_id=str(chat_id if sender_id is None else sender_id),
        text=text,
        channel="telegram",
        metadata={"chat_id": chat_id},
        gateway_id=gateway_id,
    )
    if text.strip():
        return inbound
    if chat_type != "private":
        return None  # in a group, the bot stays quiet about photos and stickers
    return text_only_reply(inbound, language="en" if language.startswith("en") else "pt")


def _optional(data: dict[str, Any], name: str, kind: type[T], path: str) -> T | None:
    return _required(data, name, kind, path) if name in data else None


def _required(data: dict[str, Any], name: str, kind: type[T], path: str) -> T:
    value = data.get(name)
    # bool is an int to Python, never to JSON; Telegram's ids fit in 52 bits.
    if not isinstance(value, kind) or _out_of_range(value):
        article = {dict: "an object", int: "an integer of at most 53 bits", str: "a string"}[kind]
        raise bad_request(f"{path}: must be {article}")
    return value


def _out_of_range(value: object) -> bool:
    return isinstance(value, int) and (isinstance(value, bool) or abs(value) > MAX_ID)
