"""The web chat page, the widget that embeds it elsewhere, and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import orjson
from aiohttp import web

from services.gateway.keys import SETTINGS
from services.gateway.openapi import OPENAPI_BYTES
from shared.web import framable_by

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
WIDGET_PLACEHOLDER = b"/*ALLOWED_ORIGINS*/ []"


async def chat_page(request: web.Request) -> web.FileResponse:
    # Framed only by the sites in CHAT_EMBED_ORIGINS (by nobody when it is empty).
    headers = {"Cache-Control": "no-cache", **framable_by(request.app[SETTINGS].chat_embed_origins)}
    return web.FileResponse(STATIC_DIR / "index.html", headers=headers)


def widget_script(origins: tuple[str, ...]) -> bytes:
    """widget.js with the sites allowed to embed the chat written in."""
    source = (STATIC_DIR / "widget.js").read_bytes()
    assert WIDGET_PLACEHOLDER in source
    return source.replace(WIDGET_PLACEHOLDER, orjson.dumps(list(origins)))


async def widget(request: web.Request) -> web.Response:
    body = widget_script(request.app[SETTINGS].chat_embed_origins)
    return web.Response(
        body=body, content_type="text/javascript", charset="utf-8", headers={"Cache-Control": "max-age=300"}
    )


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_BYTES, content_type="application/json")
