"""Request bodies within size and time (issue 26): a declared `Content-Length` over the route's
limit is refused (413) before a byte of the body is read, and a body must arrive within
HTTP_BODY_TIMEOUT_SECONDS (408), so a client announcing 128 MiB, or sending a byte a second,
holds nothing for long. Every handler reads its body through `read_body`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.gateway.keys import SETTINGS
from services.gateway.validation import MAX_BODY_BYTES
from shared.web import Problem

WEBHOOK_PREFIX = "/webhooks/"
WEBHOOK_MAX_BODY_BYTES = 1024 * 1024  # Meta batches notifications; far above any real one


def body_limit(path: str) -> int:
    return WEBHOOK_MAX_BODY_BYTES if path.startswith(WEBHOOK_PREFIX) else MAX_BODY_BYTES


@web.middleware
async def early_size_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """413 from the declared length alone; the unread body is then drained briefly and the
    connection closed (shared/edge.py LINGER_S). Inside problem_middleware: it answers problem+json."""
    declared = request.content_length
    limit = body_limit(request.path)
    if declared is not None and declared > limit:
        raise Problem(413, f"body: larger than this endpoint's limit of {limit} bytes (Content-Length: {declared})")
    return await handler(request)


async def read_body(request: web.Request) -> bytes:
    """The whole body (the exact bytes: webhook signatures are over them), within the route's size
    limit and the body deadline."""
    limit = body_limit(request.path)
    timeout = request.app[SETTINGS].http_body_timeout_s
    reader = request if limit == MAX_BODY_BYTES else request.clone(client_max_size=limit)
    if request.content.is_eof():
        # All of it has arrived (a small body usually comes with its headers): reading it waits
        # for nothing, and the deadline's timer would cost more than the read (~4 us on uvloop).
        return await reader.read()
    try:
        async with asyncio.timeout(timeout):
            return await reader.read()
    except TimeoutError:
        raise Problem(408, f"body: not received within {timeout:g} s (HTTP_BODY_TIMEOUT_SECONDS)") from None
