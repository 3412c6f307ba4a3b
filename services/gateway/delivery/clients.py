"""Clients of the channels' send APIs: the WhatsApp Cloud API (Graph) and the Telegram Bot API.

Each knows its wire format, its text limit, how fast one recipient may be written to, and which
answers are worth retrying. A reply's options go out with its last part (a WhatsApp interactive
message, reply buttons or a list; a Telegram inline keyboard), each carrying the option's id, which
a tap sends back (SPEC 4 and 6); a voice reply is Ogg/Opus audio,
uploaded to WhatsApp's media endpoint and sent as an `audio` message, or sent with Telegram's
`sendVoice` (multipart); a proactive WhatsApp template goes in the Graph API's `type: "template"`
shape. A send either returns the platform's id of the message (WhatsApp's `wamid`, which its
delivery statuses name) or raises `SendFailed`, saying whether to retry, after how long the
platform asked us to wait, and the platform's error code.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from services.gateway.delivery.split import units
from services.gateway.ratelimit import Limit
from shared.logs import mask_pii
from shared.messages import Channel, Option, ReplyMessage, Template
from shared.speech import SPEECH_MIME

# Graph API error codes that mean "slow down" or "our side, try again", even when the HTTP status
# is 400: 1/2 unknown or temporary, 4 app call limit, 80007 account rate limit, 130429 throughput
# limit, 131000 something went wrong, 131056 pair (business to one customer) rate limit.
WHATSAPP_RETRIABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131056})
# Meta's pair rate limit: about one message every 6 s to one customer, with short bursts borrowed
# from later (error 131056 past it). The burst lets a split reply go out in one go.
WHATSAPP_PACE = Limit(rate=1 / 6, burst=10)
# Telegram's guidance: about one message per second in a chat, 20 per minute in a group.
TELEGRAM_PRIVATE_PACE = Limit(rate=1.0, burst=3)
TELEGRAM_GROUP_PACE = Limit(rate=20 / 60, burst=3)
MAX_ERROR_DETAIL = 200
# Graph's limits for interactive messages: at most 3 reply buttons, with distinct titles of at most
# 20 characters (anything else is refused); a list message holds at most 10 rows, each with a title
# of at most 24 characters and a description of at most 72.
WHATSAPP_MAX_BUTTONS = 3
WHATSAPP_BUTTON_TITLE = 20
WHATSAPP_MAX_ROWS = 10
WHATSAPP_ROW_TITLE = 24
WHATSAPP_ROW_DESCRIPTION = 72
# The button that opens a list (at most 20 characters), in the reply's language (the worker says
# it); a reply that names none (an agent's) gets the two languages most bots here speak.
WHATSAPP_LIST_BUTTONS = {"pt": "Opções", "en": "Options", "es": "Opciones"}
WHATSAPP_LIST_BUTTON = "Opções · Options"


class SendFailed(Exception):
    """The platform did not take the message. `retriable` failures may succeed later; the
    platform's own `Retry-After`, when it gave one, is in `retry_after` (seconds)."""

    def __init__(self, detail: str, *, retriable: bool, retry_after: float | None = None, code: int = 0) -> None:
        super().__init__(detail)
        self.retriable = retriable
        self.retry_after = retry_after
        self.code = code  # the platform's error code (Graph API), 0 when none


class MissingAddress(ValueError):
    """The reply's metadata lacks what the channel needs to address it (never worth a retry)."""


class ChannelClient(Protocol):
    @property
    def channel(self) -> Channel: ...

    @property
    def text_limit(self) -> int:
        """The most UTF-16 units one message may carry."""
        ...

    def recipient(self, reply: ReplyMessage) -> str:
        """A stable key of the addressee (pacing and ordering); raises MissingAddress."""
        ...

    @property
    def options_text_limit(self) -> int:
        """The most UTF-16 units of the text that carries options."""
        ...

    def pace(self, reply: ReplyMessage) -> Limit:
        """How fast the platform lets us write to this addressee."""
        ...

    async def send(self, reply: ReplyMessage, text: str, options: tuple[Option, ...] = ()) -> str:
        """The platform's id of the message sent ("" when it gave none)."""
        ...

    async def send_voice(self, reply: ReplyMessage, audio: bytes) -> str:
        """Ogg/Opus audio as a voice message."""
        ...

    async def send_template(self, reply: ReplyMessage, template: Template) -> str:
        """An approved message template (WhatsApp's; other channels refuse it for good)."""
        ...


@dataclass(frozen=True, slots=True)
class WhatsAppClient:
    """`POST {base}/{phone_number_id}/messages` with the business's access token (SPEC 4)."""

    session: aiohttp.ClientSession
    api_base: str
    access_token: str
    channel: Channel = "whatsapp"
    text_limit: int = 4096
    options_text_limit: int = 1024  # the body of an interactive message

    def recipient(self, reply: ReplyMessage) -> str:
        phone_number_id, to = _required(reply, "phone_number_id"), _required(reply, "to")
        return f"{phone_number_id}:{to}"

    def pace(self, reply: ReplyMessage) -> Limit:
        return WHATSAPP_PACE

    async def send(self, reply: ReplyMessage, text: str, options: tuple[Option, ...] = ()) -> str:
        body: dict[str, Any] = {"type": "text", "text": {"body": text}}
        if options:
            button = WHATSAPP_LIST_BUTTONS.get(reply.reply.language, WHATSAPP_LIST_BUTTON)
            body = {"type": "interactive", "interactive": whatsapp_interactive(text, options, button)}
        return await self._message(reply, body)

    async def send_template(self, reply: ReplyMessage, template: Template) -> str:
        return await self._message(reply, {"type": "template", "template": whatsapp_template(template)})

    async def send_voice(self, reply: ReplyMessage, audio: bytes) -> str:
        """Upload (`POST /{phone_number_id}/media`), then send the media id as an audio message."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", SPEECH_MIME)
        form.add_field("file", audio, filename="reply.ogg", content_type=SPEECH_MIME)
        url = f"{self.api_base.rstrip('/')}/{_required(reply, 'phone_number_id')}/media"
        status, headers, payload = await _post(self.session, url, form, self._authorization)
        media_id = payload.get("id")
        if not 200 <= status < 300 or not isinstance(media_id, str):
            raise self._failure(status, headers, payload)
        return await self._message(reply, {"type": "audio", "audio": {"id": media_id}})

    @property
    def _authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    async def _message(self, reply: ReplyMessage, content: dict[str, Any]) -> str:
        """Sends; the wamid of the message (`messages[0].id` of the answer)."""
        url = f"{self.api_base.rstrip('/')}/{_required(reply, 'phone_number_id')}/messages"
        body = {"messaging_product": "whatsapp", "to": _required(reply, "to"), **content}
        status, headers, payload = await _post(self.session, url, body, self._authorization)
        if not 200 <= status < 300:
            raise self._failure(status, headers, payload)
        messages = payload.get("messages")
        first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else {}
        return str(first.get("id") or "")

    @staticmethod
    def _failure(status: int, headers: CIMultiDictProxy[str], payload: dict[str, Any]) -> SendFailed:
        error = _object(payload, "error")
        code = error.get("code")
        retriable = status == 429 or status >= 500 or code in WHATSAPP_RETRIABLE_CODES
        detail = f"WhatsApp answered {status} (code {code}): {error.get('message', '')}"
        return SendFailed(
            _clip(detail),
            retriable=retriable,
            retry_after=retry_after_of(headers),
            code=code if isinstance(code, int) and not isinstance(code, bool) else 0,
        )


def whatsapp_template(template: Template) -> dict[str, Any]:
    """The Graph API's `template` object: name, language as `{"code", "policy"}`, components as given."""
    body: dict[str, Any] = {
        "name": template.name,
        "language": {"policy": "deterministic", "code": template.language},
    }
    if template.components:
        body["components"] = list(template.components)
    return body


def whatsapp_interactive(
    text: str, options: tuple[Option, ...], list_button: str = WHATSAPP_LIST_BUTTON
) -> dict[str, Any]:
    """The `interactive` object carrying `options`: reply buttons when every option fits one,
    else a list message of one section with a row per option, opened by `list_button`."""
    labels = [option.label for option in options]
    fits_buttons = len(options) <= WHATSAPP_MAX_BUTTONS and len(set(labels)) == len(labels)
    if fits_buttons and all(units(label) <= WHATSAPP_BUTTON_TITLE for label in labels):
        buttons = [{"type": "reply", "reply": {"id": option.id, "title": option.label}} for option in options]
        return {"type": "button", "body": {"text": text}, "action": {"buttons": buttons}}
    rows = [_list_row(option) for option in options[:WHATSAPP_MAX_ROWS]]
    return {
        "type": "list",
        "body": {"text": text},
        "action": {"button": list_button, "sections": [{"rows": rows}]},
    }


def _list_row(option: Option) -> dict[str, str]:
    row = {"id": option.id, "title": _fit(option.label, WHATSAPP_ROW_TITLE)}
    if units(option.label) > WHATSAPP_ROW_TITLE:  # its title is cut: the whole label shows under it
        row["description"] = _fit(option.label, WHATSAPP_ROW_DESCRIPTION)
    return row


def _fit(label: str, limit: int) -> str:
    """`label` in at most `limit` UTF-16 units (never less than the platform counts), cut at a word
    when one ends in time, an ellipsis marking the cut."""
    label = " ".join(label.split())
    if units(label) <= limit:
        return label
    cut = label[: limit - 1]
    while units(cut) > limit - 1:
        cut = cut[:-1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.?!") + "…"


@dataclass(frozen=True, slots=True)
class TelegramClient:
    """`POST {base}/bot{token}/sendMessage` with `{"chat_id", "text"}` (SPEC 4)."""

    session: aiohttp.ClientSession
    api_base: str
    bot_token: str
    channel: Channel = "telegram"
    text_limit: int = 4096
    options_text_limit: int = 4096

    def recipient(self, reply: ReplyMessage) -> str:
        return str(_required(reply, "chat_id"))

    def pace(self, reply: ReplyMessage) -> Limit:
        # Group and channel chat ids are negative, private chats (users) positive.
        group = str(reply.metadata.get("chat_id", "")).startswith("-")
        return TELEGRAM_GROUP_PACE if group else TELEGRAM_PRIVATE_PACE

    async def send(self, reply: ReplyMessage, text: str, options: tuple[Option, ...] = ()) -> str:
        body: dict[str, Any] = {"chat_id": _required(reply, "chat_id"), "text": text}
        if options:  # one button a row; a tap sends back the option's id (at most 64 bytes) as callback data
            body["reply_markup"] = {"inline_keyboard": [[{"text": o.label, "callback_data": o.id}] for o in options]}
        return await self._call("sendMessage", body)

    async def send_voice(self, reply: ReplyMessage, audio: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("chat_id", str(_required(reply, "chat_id")))
        form.add_field("voice", audio, filename="reply.ogg", content_type=SPEECH_MIME)
        return await self._call("sendVoice", form)

    async def send_template(self, reply: ReplyMessage, template: Template) -> str:
        raise SendFailed("Telegram has no message templates", retriable=False)

    async def _call(self, method: str, body: dict[str, Any] | aiohttp.FormData) -> str:
        # The token is part of the path: this URL must never reach a log line.
        url = f"{self.api_base.rstrip('/')}/bot{self.bot_token}/{method}"
        status, headers, payload = await _post(self.session, url, body)
        if 200 <= status < 300 and payload.get("ok", True):
            return str(_object(payload, "result").get("message_id") or "")
        wait = _object(payload, "parameters").get("retry_after")
        retry_after = float(wait) if isinstance(wait, int | float) else retry_after_of(headers)
        detail = f"Telegram answered {status}: {payload.get('description', '')}"
        code = payload.get("error_code")
        raise SendFailed(
            _clip(detail),
            retriable=status == 429 or status >= 500,
            retry_after=retry_after,
            code=code if isinstance(code, int) and not isinstance(code, bool) else 0,
        )


def _required(reply: ReplyMessage, name: str) -> Any:
    value = reply.metadata.get(name)
    if value is None or value == "":
        raise MissingAddress(f"reply {reply.message_id} has no metadata.{name}")
    return value


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any] | aiohttp.FormData,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDictProxy[str], dict[str, Any]]:
    """One POST, JSON or multipart; a network failure or timeout is a retriable SendFailed naming no URL."""
    if isinstance(body, aiohttp.FormData):
        data: bytes | aiohttp.FormData = body
    else:
        data, headers = orjson.dumps(body), {"Content-Type": "application/json", **(headers or {})}
    try:
        async with session.post(url, data=data, headers=headers) as response:
            raw = await response.read()
            return response.status, response.headers, _json_object(raw)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SendFailed(f"network: {type(exc).__name__}", retriable=True) from None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _object(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _clip(detail: str) -> str:
    return mask_pii(detail[:MAX_ERROR_DETAIL])


def retry_after_of(headers: CIMultiDictProxy[str]) -> float | None:
    """`Retry-After` as seconds from now: either a number of seconds or an HTTP date."""
    raw = headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
