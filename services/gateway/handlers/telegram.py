"""Telegram Bot API webhook (SPEC section 4): updates pushed by `setWebhook`.

Telegram proves it is the caller with the `secret_token` given to `setWebhook`, echoed in
`X-Telegram-Bot-Api-Secret-Token`. A text message becomes an inbound message whose id comes from
the `update_id` (Telegram re-sends an update until it gets a 2xx, always with the same id); one
conversation per chat, private or group. A voice note, audio file, photo or document goes along as
an attachment (its `file_id`, never the bytes: the worker fetches and reads them), with its
caption as the text; a tap on an inline-keyboard button we sent (`callback_query`) becomes a
message whose option is the button's callback data (the option's id) and whose text is the button's
label (or that id, when the update no longer shows the keyboard), and the webhook's answer carries
the `answerCallbackQuery` that
stops the button's spinner. Other updates (edits, joins, ...) are acknowledged; a private chat's
other messages (stickers, locations, ...) get a short "cannot read this, please write" reply.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from services.gateway.bodies import read_body
from services.gateway.handlers.whatsapp import text_only_reply
from services.gateway.intake import unavailable
from services.gateway.keys import CONTACTS, INTAKE, SETTINGS
from services.gateway.validation import bad_request, display_name, parse_json_object
from shared.messages import Attachment, InboundMessage, MediaKind, ReplyMessage
from shared.store import REDIS_ERRORS
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
    update = parse_json_object(await read_body(request))
    item = parse_update(update, settings.instance_id, settings.media_max_bytes)
    if item is None:
        return json_response({"accepted": 0, "duplicates": 0})
    [outcome] = await request.app[INTAKE].accept_all([item])
    try:  # the customer's opt-out or opt-in, for proactive messages (shared/contacts.py)
        await request.app[CONTACTS].seen_all([item])
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
    body: dict[str, Any] = {"accepted": int(not outcome.duplicate), "duplicates": int(outcome.duplicate)}
    if "callback_query" in update:
        # A Bot API call in the webhook's answer: Telegram makes it, and the button stops spinning.
        body |= {"method": "answerCallbackQuery", "callback_query_id": update["callback_query"]["id"]}
    return json_response(body)


def parse_update(update: dict[str, Any], gateway_id: str, media_max_bytes: int) -> InboundMessage | ReplyMessage | None:
    """The message to queue for an Update, if any. Every field used is checked first, exactly as
    the document at /openapi.json describes it, whichever way the update then goes."""
    update_id = _required(update, "update_id", int, "update_id")
    message = _message(update, "message", media_max_bytes) if "message" in update else None
    tap: str | None = None
    label = ""
    if "callback_query" in update:
        query = _required(update, "callback_query", dict, "callback_query")
        _required(query, "id", str, "callback_query.id")
        tap = _optional(query, "data", str, "callback_query.data") or ""
        sender_id, language, name = _sender(query, "callback_query.from")
        message = None
        if "message" in query:  # the bot's own message, that carried the button: its chat and keyboard
            tapped = _required(query, "message", dict, "callback_query.message")
            chat_id, chat_type = _chat(tapped, "callback_query.message")
            message = _Message(chat_id, chat_type, sender_id, language, name, "", "", None)
            label = _label(tapped, tap, "callback_query.message")
    if message is None:
        return None  # edits, channel posts, member changes, inline-mode buttons: nothing to answer
    text = (label or tap) if tap is not None else message.text
    inbound = InboundMessage(
        message_id=f"telegram:{update_id}",
        conversation_id=f"telegram:{message.chat_id}",
        user_id=str(message.chat_id if message.sender_id is None else message.sender_id),
        text=text,
        channel="telegram",
        metadata=_metadata(message),
        gateway_id=gateway_id,
        option=tap or "",
    )
    if text.strip():
        return inbound
    if tap is None and message.attachment is not None:
        return dataclasses.replace(inbound, text=message.caption, attachment=message.attachment)
    if message.chat_type != "private":
        return None  # in a group, the bot stays quiet about stickers and the like
    return text_only_reply(inbound, language=message.language.lower()[:2])


def _metadata(message: _Message) -> dict[str, Any]:
    """The chat to answer, and for the bot and the agents the sender's language and first name."""
    metadata: dict[str, Any] = {"chat_id": message.chat_id}
    if message.language:
        metadata["language"] = message.language
    if message.name:
        metadata["name"] = display_name(message.name)
    return metadata


@dataclass(frozen=True, slots=True)
class _Message:
    chat_id: int
    chat_type: str | None
    sender_id: int | None
    language: str
    name: str
    text: str
    caption: str
    attachment: Attachment | None


def _message(parent: dict[str, Any], path: str, media_max_bytes: int) -> _Message:
    message = _required(parent, path, dict, path)
    chat_id, chat_type = _chat(message, path)
    sender_id, language, name = _sender(message, f"{path}.from")
    return _Message(
        chat_id=chat_id,
        chat_type=chat_type,
        sender_id=sender_id,
        language=language,
        name=name,
        text=_optional(message, "text", str, f"{path}.text") or "",
        caption=_optional(message, "caption", str, f"{path}.caption") or "",
        attachment=_attachment(message, path, media_max_bytes),
    )


def _label(message: dict[str, Any], data: str, path: str) -> str:
    """The text of the inline button whose callback data was tapped, when the bot's message still
    shows it (Telegram sends the message with its keyboard as it is now); else empty. The whole
    keyboard is checked, whichever button matches."""
    if "reply_markup" not in message:
        return ""
    markup = _required(message, "reply_markup", dict, f"{path}.reply_markup")
    keyboard = _optional(markup, "inline_keyboard", list, f"{path}.reply_markup.inline_keyboard") or []
    found = ""
    for r, row in enumerate(keyboard):
        if not isinstance(row, list):
            raise bad_request(f"{path}.reply_markup.inline_keyboard[{r}]: must be an array")
        for b, button in enumerate(row):
            where = f"{path}.reply_markup.inline_keyboard[{r}][{b}]"
            if not isinstance(button, dict):
                raise bad_request(f"{where}: must be an object")
            text = _required(button, "text", str, f"{where}.text")
            callback_data = _optional(button, "callback_data", str, f"{where}.callback_data")
            if data and callback_data == data and not found:
                found = text
    return found


def _chat(message: dict[str, Any], path: str) -> tuple[int, str | None]:
    chat = _required(message, "chat", dict, f"{path}.chat")
    return _required(chat, "id", int, f"{path}.chat.id"), _optional(chat, "type", str, f"{path}.chat.type")


def _sender(parent: dict[str, Any], path: str) -> tuple[int | None, str, str]:
    """The sender's id, language code and first name (each may be missing)."""
    sender = _optional(parent, "from", dict, path) or {}
    language = _optional(sender, "language_code", str, f"{path}.language_code") or ""
    name = _optional(sender, "first_name", str, f"{path}.first_name") or ""
    return _optional(sender, "id", int, f"{path}.id"), language, name


def _attachment(message: dict[str, Any], where: str, max_bytes: int) -> Attachment | None:
    """The voice note, audio file, document or photo of the message (the first of them), every
    one of those fields checked."""
    found: list[Attachment] = []
    kinds: tuple[tuple[str, MediaKind], ...] = (("voice", "audio"), ("audio", "audio"), ("document", "document"))
    for name, kind in kinds:
        if name in message:
            media = _required(message, name, dict, f"{where}.{name}")
            path = f"{where}.{name}"
            found.append(
                Attachment(
                    kind=kind,
                    media_id=_required(media, "file_id", str, f"{path}.file_id"),
                    mime_type=_optional(media, "mime_type", str, f"{path}.mime_type") or "",
                    voice=name == "voice",
                    filename=_optional(media, "file_name", str, f"{path}.file_name") or "",
                    size=max(0, _optional(media, "file_size", int, f"{path}.file_size") or 0),
                )
            )
    if "photo" in message:
        sizes = message["photo"]
        if not isinstance(sizes, list) or not sizes or not all(isinstance(size, dict) for size in sizes):
            raise bad_request(f"{where}.photo: must be a non-empty array of PhotoSize objects")
        # The largest that may be fetched (Telegram lists them smallest first); a size without a
        # usable file_id is skipped, a file_size that is not a count is taken as unknown.
        usable = [
            (size["file_id"], size["file_size"] if _is_count(size.get("file_size")) else 0)
            for size in sizes
            if isinstance(size.get("file_id"), str) and size["file_id"]
        ]
        fitting = [(file_id, size) for file_id, size in usable if size <= max_bytes] or usable[:1]
        if fitting:
            file_id, size = fitting[-1]
            found.append(Attachment(kind="image", media_id=file_id, mime_type="image/jpeg", size=size))
    return found[0] if found else None


def _optional(data: dict[str, Any], name: str, kind: type[T], path: str) -> T | None:
    return _required(data, name, kind, path) if name in data else None


def _required(data: dict[str, Any], name: str, kind: type[T], path: str) -> T:
    value = data.get(name)
    # bool is an int to Python, never to JSON; Telegram's ids fit in 52 bits.
    if not isinstance(value, kind) or _out_of_range(value):
        article = {dict: "an object", list: "an array", int: "an integer of at most 53 bits", str: "a string"}[kind]
        raise bad_request(f"{path}: must be {article}")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def _out_of_range(value: object) -> bool:
    return isinstance(value, int) and (isinstance(value, bool) or abs(value) > MAX_ID)
