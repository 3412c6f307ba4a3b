"""The web chat page, the widget that embeds it elsewhere, and the OpenAPI document."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from services.gateway.keys import SETTINGS
from services.gateway.openapi import OPENAPI_BYTES
from shared.settings import Settings
from shared.web import framable_by

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
WIDGET_PLACEHOLDER = b"/*ALLOWED_ORIGINS*/ []"
COLOR_PLACEHOLDER = b'/*CHAT_COLOR*/ "#0b7a5c"'
PAGE_PLACEHOLDER = b"<body>"


def chat_html(settings: Settings) -> bytes:
    """index.html with the CHAT_* look written into its <body> (chat-i18n.js applies it)."""
    config = {"title": settings.chat_title, "greeting": settings.chat_greeting, "avatar": settings.chat_avatar_url}
    attributes = f' data-color="{settings.chat_color}"' + "".join(
        f' data-{name}="{html.escape(value, quote=True)}"' for name, value in config.items() if value
    )
    source = (STATIC_DIR / "index.html").read_bytes()
    assert PAGE_PLACEHOLDER in source
    return source.replace(PAGE_PLACEHOLDER, b"<body" + attributes.encode() + b">")


async def chat_page(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    # Framed only by the sites in CHAT_EMBED_ORIGINS (by nobody when it is empty).
    headers = {"Cache-Control": "no-cache", **framable_by(settings.chat_embed_origins)}
    if settings.chat_avatar_url:  # the avatar may come from its own site
        avatar = urlsplit(settings.chat_avatar_url)
        policy = headers["Content-Security-Policy"]
        headers["Content-Security-Policy"] = policy.replace(
            "img-src 'self' data:", f"img-src 'self' data: {avatar.scheme}://{avatar.netloc}"
        )
    return web.Response(body=chat_html(settings), content_type="text/html", charset="utf-8", headers=headers)


def widget_script(origins: tuple[str, ...], color: str = "#0b7a5c") -> bytes:
    """widget.js with the sites allowed to embed the chat, and the launcher's colour, written in."""
    source = (STATIC_DIR / "widget.js").read_bytes()
    assert WIDGET_PLACEHOLDER in source and COLOR_PLACEHOLDER in source
    return source.replace(WIDGET_PLACEHOLDER, orjson.dumps(list(origins))).replace(
        COLOR_PLACEHOLDER, orjson.dumps(color)
    )


async def widget(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = widget_script(settings.chat_embed_origins, settings.chat_color)
    return web.Response(
        body=body, content_type="text/javascript", charset="utf-8", headers={"Cache-Control": "max-age=300"}
    )


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_BYTES, content_type="application/json")
