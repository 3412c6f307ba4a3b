"""The web chat page and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.gateway.openapi import OPENAPI_BYTES

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


async def chat_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_BYTES, content_type="application/json")
