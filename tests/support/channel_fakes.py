"""Local stand-ins for the channels' HTTP APIs, speaking their wire formats, plus the senders of
their webhooks: the gateway's real clients talk to these in the tests.

`FakeChannelApi` records every request. Its answers are scripted: each queued `Answer` is used
once, in order, then every request gets the platform's normal success answer. `Hold` keeps a
request open until the test releases it (to kill a consumer mid-send); a held request counts as
never having reached the platform. It also holds the media customers "sent" (`add_media`), served
as the platforms do: Graph's media info then its URL, Telegram's `getFile` then the file, both
checking the credentials; uploads (`/media`) and `sendVoice` are recorded with their bytes.
Telegram's webhook side too: `setWebhook` and `getWebhookInfo` as the Bot API answers them, and
`send_update` posting an update to the registered URL with the registered secret, noting a refusal
in `last_error_message` the way Telegram does (unlike Telegram, any http URL is accepted).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from shared.settings import BUNDLED_KB
from tests.support import Service, free_port

GRAPH_VERSION = "v19.0"
WHATSAPP_ENV = {
    "WHATSAPP_VERIFY_TOKEN": "verify-me-please",
    "WHATSAPP_APP_SECRET": "app-secret-0123456789abcdef",
    "WHATSAPP_ACCESS_TOKEN": "EAAGtestaccesstoken0123456789abcdefXYZ",
}
TELEGRAM_ENV = {
    "TELEGRAM_BOT_TOKEN": "123456789:AAHtestbottoken_0123456789abcdefghijk",
    "TELEGRAM_SECRET_TOKEN": "telegram-secret-0123456789",
}
PHONE_NUMBER_ID = "106540352242922"


def kb_answer(entry_id: str) -> str:
    """The bundled knowledge base's answer for an entry: what the kb engine replies, verbatim."""
    entries = yaml.safe_load(BUNDLED_KB.read_text())["entries"]
    return str(next(entry["answer"] for entry in entries if entry["id"] == entry_id))


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


@dataclass
class Hold:
    """Keep the request open until `release` is set; `arrived` tells the test it is in."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # monotonic, when the request arrived
    status: int | None = None  # what the fake answered; None: held and dropped
    # The file of a multipart request (sendVoice, a media upload): (content type, bytes).
    file: tuple[str, bytes] | None = None
    # What the fake answered (its JSON body): a WhatsApp send's wamid is `answer["messages"][0]["id"]`.
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        if "chat_id" in self.body:
            return str(self.body.get("text"))
        if self.body.get("type") == "interactive":
            return str(self.body["interactive"]["body"]["text"])
        return str(self.body.get("text", {}).get("body"))

    @property
    def interactive(self) -> str | None:
        """WhatsApp's kind of interactive message (`button` or `list`), None for anything else."""
        return str(self.body["interactive"]["type"]) if self.body.get("type") == "interactive" else None

    @property
    def options(self) -> list[tuple[str, str]]:
        """The (id, shown text) of every choice it carried: WhatsApp reply buttons or list rows
        (a row's title), or a Telegram inline keyboard (its callback data and text)."""
        if "reply_markup" in self.body:
            rows = self.body["reply_markup"]["inline_keyboard"]
            assert all(len(row) == 1 for row in rows), "one button a row"
            return [(row[0]["callback_data"], row[0]["text"]) for row in rows]
        if self.interactive == "button":
            return [(b["reply"]["id"], b["reply"]["title"]) for b in self.body["interactive"]["action"]["buttons"]]
        if self.interactive == "list":
            [section] = self.body["interactive"]["action"]["sections"]
            return [(row["id"], row["title"]) for row in section["rows"]]
        return []

    @property
    def labels(self) -> list[str]:
        return [label for _, label in self.options]

    @property
    def is_voice(self) -> bool:
        return self.path.endswith("/sendVoice") or self.body.get("type") == "audio"


@dataclass
class Webhook:
    """What `setWebhook` registered, and how its deliveries went (getWebhookInfo's fields)."""

    url: str = ""
    secret: str = ""
    allowed_updates: list[str] = field(default_factory=list)
    pending_update_count: int = 0
    last_error_date: int | None = None
    last_error_message: str | None = None


@dataclass
class MediaFile:
    data: bytes
    mime_type: str
    # What the media info / getFile declares (None: the real size); lying lets a test check the
    # limit is also enforced while the bytes stream. A string is sent as one (the Graph API's
    # `file_size` comes as a string of digits).
    declared_size: int | str | None = None
    fetches: int = 0
    # What the media info / getFile answers instead of this server's own download address: a
    # hostile platform answer (another host, a path climbing out), for the SSRF tests.
    url: str | None = None
    file_path: str | None = None


class FakeChannelApi:
    """The Graph API's `/{version}/{phone_number_id}/messages` and the Bot API's
    `/bot{token}/sendMessage`, on one local port."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Answer | Hold] = []
        self._held: list[Hold] = []
        self.changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        # The wamids the next WhatsApp sends return, in order (then wamid.fake<n>): a test can
        # post a message's statuses before it is sent.
        self.next_wamids: list[str] = []
        self.port = free_port()
        self.media: dict[str, MediaFile] = {}
        self.uploads: list[Received] = []
        self.media_requests: list[str] = []  # paths of the media info and download requests
        self.webhook = Webhook()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"WHATSAPP_API_BASE": f"{self.url}/{GRAPH_VERSION}", "TELEGRAM_API_BASE": self.url}

    @property
    def delivered(self) -> list[Received]:
        """What the platform took (answered 2xx), in order of arrival."""
        return [r for r in self.received if r.status is not None and 200 <= r.status < 300]

    def delivered_to(self, recipient: str | int) -> list[Received]:
        return [r for r in self.delivered if str(r.body.get("to", r.body.get("chat_id"))) == str(recipient)]

    async def start(self) -> FakeChannelApi:
        app = web.Application()
        app.router.add_post(r"/{version}/{phone_number_id}/messages", self._whatsapp)
        app.router.add_post(r"/bot{token}/sendMessage", self._telegram)
        app.router.add_post(r"/bot{token}/sendVoice", self._telegram_voice)
        app.router.add_post(r"/{version}/{phone_number_id}/media", self._whatsapp_upload)
        app.router.add_get(r"/bot{token}/getFile", self._telegram_get_file)
        app.router.add_get(r"/file/bot{token}/{path:.+}", self._download)
        app.router.add_get(r"/graph-files/{media_id}", self._download)
        for method in ("GET", "POST"):  # the Bot API takes either, with query, form or JSON parameters
            app.router.add_route(method, r"/bot{token}/setWebhook", self._telegram_set_webhook)
            app.router.add_route(method, r"/bot{token}/getWebhookInfo", self._telegram_webhook_info)
        app.router.add_get(r"/{version}/{media_id}", self._whatsapp_media_info)  # last: it matches any /a/b
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        for step in [*self.script, *self._held]:
            if isinstance(step, Hold):
                step.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def add_media(
        self,
        media_id: str,
        data: bytes,
        mime_type: str,
        declared_size: int | str | None = None,
        *,
        url: str | None = None,
        file_path: str | None = None,
    ) -> None:
        self.media[media_id] = MediaFile(data, mime_type, declared_size, url=url, file_path=file_path)

    def _size(self, media: MediaFile) -> int | str:
        return len(media.data) if media.declared_size is None else media.declared_size

    async def _whatsapp_media_info(self, request: web.Request) -> web.Response:
        self.media_requests.append(request.path)
        if request.headers.get("Authorization") != f"Bearer {WHATSAPP_ENV['WHATSAPP_ACCESS_TOKEN']}":
            return web.json_response({"error": {"code": 190, "message": "Invalid OAuth access token"}}, status=401)
        media_id = request.match_info["media_id"]
        media = self.media.get(media_id)
        if media is None:
            return web.json_response({"error": {"code": 100, "message": "Unsupported get request"}}, status=400)
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": media.url or f"{self.url}/graph-files/{media_id}",
                "mime_type": media.mime_type,
                "sha256": hashlib.sha256(media.data).hexdigest(),
                "file_size": self._size(media),
                "id": media_id,
            }
        )

    @staticmethod
    def _unauthorized(request: web.Request) -> web.Response | None:
        if request.match_info["token"] == TELEGRAM_ENV["TELEGRAM_BOT_TOKEN"]:
            return None
        return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)

    async def _telegram_set_webhook(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        params = dict(request.query)
        if request.content_type == "application/json":
            params |= {key: str(value) for key, value in (await request.json()).items()}
        elif request.method == "POST":
            params |= {key: str(value) for key, value in (await request.post()).items()}
        secret = params.get("secret_token", "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{0,256}", secret):
            description = "Bad Request: secret token contains unallowed characters"
            return web.json_response({"ok": False, "error_code": 400, "description": description}, status=400)
        allowed = orjson.loads(params["allowed_updates"]) if params.get("allowed_updates") else []
        self.webhook = Webhook(params.get("url", ""), secret, allowed)
        said = "Webhook was set" if self.webhook.url else "Webhook was deleted"
        return web.json_response({"ok": True, "result": True, "description": said})

    async def _telegram_webhook_info(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        hook = self.webhook
        info: dict[str, Any] = {"url": hook.url, "has_custom_certificate": False}
        info["pending_update_count"] = hook.pending_update_count
        if hook.last_error_date is not None:
            info |= {"last_error_date": hook.last_error_date, "last_error_message": hook.last_error_message}
        if hook.url:
            info |= {"max_connections": 40, "allowed_updates": hook.allowed_updates or ["message"]}
        return web.json_response({"ok": True, "result": info})

    async def send_update(self, update: dict[str, Any]) -> int:
        """Deliver an update to the registered webhook as Telegram does; its HTTP status."""
        hook = self.webhook
        headers = {"X-Telegram-Bot-Api-Secret-Token": hook.secret} if hook.secret else {}
        async with (
            aiohttp.ClientSession() as http,
            http.post(hook.url, json=update, headers=headers) as response,
        ):
            if response.status >= 300:
                hook.pending_update_count += 1
                hook.last_error_date = int(time.time())
                hook.last_error_message = f"Wrong response from the webhook: {response.status} {response.reason}"
            return response.status

    async def _telegram_get_file(self, request: web.Request) -> web.Response:
        self.media_requests.append(request.path)
        if request.match_info["token"] != TELEGRAM_ENV["TELEGRAM_BOT_TOKEN"]:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        file_id = request.query.get("file_id", "")
        media = self.media.get(file_id)
        if media is None:
            return web.json_response({"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"})
        result = {"file_id": file_id, "file_unique_id": "u" + file_id, "file_size": self._size(media)}
        return web.json_response({"ok": True, "result": {**result, "file_path": media.file_path or f"media/{file_id}"}})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """The file itself: Graph's URL needs the token; Telegram's carries it in the path and serves
        every file as octet-stream."""
        self.media_requests.append(request.path)
        if "media_id" in request.match_info:
            if request.headers.get("Authorization") != f"Bearer {WHATSAPP_ENV['WHATSAPP_ACCESS_TOKEN']}":
                return web.Response(status=401)
            media, content_type = self.media.get(request.match_info["media_id"]), None
        else:
            if request.match_info["token"] != TELEGRAM_ENV["TELEGRAM_BOT_TOKEN"]:
                return web.Response(status=401)
            path = request.match_info["path"]  # a file's own `file_path`, or media/<file_id>
            named = (media for media in self.media.values() if media.file_path == path)
            media = next(named, None) or self.media.get(path.removeprefix("media/"))
            content_type = "application/octet-stream"
        if media is None:
            return web.Response(status=404)
        media.fetches += 1
        response = web.StreamResponse(headers={"Content-Type": content_type or media.mime_type})
        await response.prepare(request)  # chunked: no Content-Length, the reader must count
        for start in range(0, len(media.data), 64 * 1024):
            await response.write(media.data[start : start + 64 * 1024])
        await response.write_eof()
        return response

    async def _whatsapp_upload(self, request: web.Request) -> web.Response:
        record = await self._multipart(request, "file")
        self.uploads.append(record)
        media_id = f"uploaded-{next(self._ids)}"
        record.status = 200
        return web.json_response({"id": media_id})

    async def _telegram_voice(self, request: web.Request) -> web.Response:
        record = await self._multipart(request, "voice")
        self.received.append(record)
        record.status = 200
        async with self.changed:
            self.changed.notify_all()
        return web.json_response({"ok": True, "result": {"message_id": next(self._ids), "date": int(time.time())}})

    @staticmethod
    async def _multipart(request: web.Request, file_field: str) -> Received:
        fields: dict[str, Any] = {}
        file: tuple[str, bytes] | None = None
        async for part in await request.multipart():
            assert isinstance(part, aiohttp.BodyPartReader)
            if part.name == file_field:
                file = (part.headers.get("Content-Type", ""), bytes(await part.read()))
            else:
                fields[str(part.name)] = await part.text()
        return Received(request.path, dict(request.headers), fields, time.monotonic(), file=file)

    async def _whatsapp(self, request: web.Request) -> web.Response:
        default = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": "", "wa_id": ""}],
            "messages": [{"id": self.next_wamids.pop(0) if self.next_wamids else f"wamid.fake{next(self._ids)}"}],
        }
        return await self._answer(request, default)

    async def _telegram(self, request: web.Request) -> web.Response:
        default = {"ok": True, "result": {"message_id": next(self._ids), "date": int(time.time())}}
        return await self._answer(request, default)

    async def _answer(self, request: web.Request, success: dict[str, Any]) -> web.Response:
        record = Received(request.path, dict(request.headers), orjson.loads(await request.read()), time.monotonic())
        self.received.append(record)
        step = self.script.pop(0) if self.script else Answer(200)
        if isinstance(step, Hold):
            self._held.append(step)
            step.arrived.set()
            await step.release.wait()
            step = Answer(503)
        else:
            record.status = step.status
        async with self.changed:
            self.changed.notify_all()
        body = step.body if step.body is not None else (success if step.status < 300 else {"error": "scripted"})
        record.answer = body
        return web.Response(
            body=orjson.dumps(body), status=step.status, headers=step.headers, content_type="application/json"
        )


# Webhook senders ---------------------------------------------------------------------------------
def whatsapp_text(wamid: str, sender: str, text: str, phone_number_id: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    """A notification as Meta posts it for one incoming text message."""
    return _whatsapp_notification(
        phone_number_id,
        {
            "contacts": [{"profile": {"name": "Cliente"}, "wa_id": sender}],
            "messages": [
                {
                    "from": sender,
                    "id": wamid,
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        },
    )


def whatsapp_message(wamid: str, sender: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """A non-text message (image, reaction, location, ...)."""
    return _whatsapp_notification(
        PHONE_NUMBER_ID,
        {
            "contacts": [{"profile": {"name": "Cliente"}, "wa_id": sender}],
            "messages": [
                {"from": sender, "id": wamid, "timestamp": str(int(time.time())), "type": kind, kind: content}
            ],
        },
    )


def whatsapp_status(wamid: str, recipient: str, status: str = "delivered") -> dict[str, Any]:
    return _whatsapp_notification(
        PHONE_NUMBER_ID,
        {"statuses": [{"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": recipient}]},
    )


def _whatsapp_notification(phone_number_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def sign(body: bytes, secret: str = WHATSAPP_ENV["WHATSAPP_APP_SECRET"]) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post_whatsapp(
    http: aiohttp.ClientSession, gateway: Service, payload: dict[str, Any], signature: str | None = "good"
) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps(payload)
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = sign(body) if signature == "good" else signature
    async with http.post(f"{gateway.url}/webhooks/whatsapp", data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def telegram_text(
    update_id: int, chat_id: int, text: str, *, user_id: int | None = None, chat_type: str = "private"
) -> dict[str, Any]:
    """An Update carrying a text message, as the Bot API posts it to a webhook."""
    user = user_id if user_id is not None else chat_id
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    chat.update({"first_name": "Ana"} if chat_type == "private" else {"title": "Clientes"})
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id % 100_000,
            "from": {"id": user, "is_bot": False, "first_name": "Ana", "language_code": "pt-br"},
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        },
    }


async def post_telegram(
    http: aiohttp.ClientSession,
    gateway: Service,
    update: dict[str, Any],
    secret: str | None = TELEGRAM_ENV["TELEGRAM_SECRET_TOKEN"],
) -> tuple[int, dict[str, Any]]:
    headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
    async with http.post(f"{gateway.url}/webhooks/telegram", json=update, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def telegram_media(update_id: int, chat_id: int, field: str, content: Any, caption: str = "") -> dict[str, Any]:
    """An Update with a voice note, audio, photo (a list of sizes) or document, maybe captioned."""
    update = telegram_text(update_id, chat_id, "")
    message = update["message"]
    del message["text"]
    message[field] = content
    if caption:
        message["caption"] = caption
    return update


def telegram_tap(update_id: int, chat_id: int, data: str, keyboard: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """A tap on an inline-keyboard button of one of the bot's messages (a callback_query). The
    bot's message comes with the `keyboard` it shows, (callback data, text) a row, when given."""
    sent = telegram_text(update_id, chat_id, "a message of the bot")["message"]
    message = {**sent, "from": {"id": 1, "is_bot": True, "first_name": "Bot"}}
    if keyboard:
        message["reply_markup"] = {
            "inline_keyboard": [[{"text": text, "callback_data": callback}] for callback, text in keyboard]
        }
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cbq-{update_id}",
            "from": sent["from"],
            "message": message,
            "chat_instance": "-1234",
            "data": data,
        },
    }


def whatsapp_tap(wamid: str, sender: str, option_id: str, title: str, *, row: bool = False) -> dict[str, Any]:
    """A tap on one of our reply buttons (or, `row`, a row of our list message), as Meta posts it."""
    kind = "list_reply" if row else "button_reply"
    return whatsapp_message(wamid, sender, "interactive", {"type": kind, kind: {"id": option_id, "title": title}})
