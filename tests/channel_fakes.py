"""Local stand-ins for the channels' HTTP APIs, speaking their wire formats, plus the senders of
their webhooks: the gateway's real clients talk to these in the tests.

`FakeChannelApi` records every request. Its answers are scripted: each queued `Answer` is used
once, in order, then every request gets the platform's normal success answer. `Hold` keeps a
request open until the test releases it (to kill a consumer mid-send); a held request counts as
never having reached the platform.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
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

    @property
    def text(self) -> str:
        return str(self.body.get("text") if "chat_id" in self.body else self.body.get("text", {}).get("body"))


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
        self.port = free_port()

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

    async def _whatsapp(self, request: web.Request) -> web.Response:
        default = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": "", "wa_id": ""}],
            "messages": [{"id": f"wamid.fake{next(self._ids)}"}],
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
