"""`GET /v1/conversations/{conversation_id}/events`: a conversation's replies as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from services.gateway.intake import unavailable
from services.gateway.keys import ROUTER
from services.gateway.replies import Streamed
from services.gateway.validation import parse_conversation_id
from shared.broker import BROKER_ERRORS
from shared.messages import ReplyDelta, ReplyMessage

KEEPALIVE_SECONDS = 15.0  # below the idle timeouts of common proxies (nginx: 60 s)


def encode_event(reply: ReplyMessage | ReplyDelta) -> bytes:
    data = orjson.dumps(reply.public_dict())
    if isinstance(reply, ReplyDelta):  # the reply's text so far; its `reply` event follows
        return b"event: delta\ndata: " + data + b"\n\n"
    return b"id: " + reply.message_id.encode() + b"\nevent: reply\ndata: " + data + b"\n\n"


async def conversation_events(request: web.Request) -> web.StreamResponse:
    conversation_id = parse_conversation_id(request.match_info["conversation_id"])
    async with contextlib.AsyncExitStack() as stack:
        try:
            queue = await stack.enter_async_context(request.app[ROUTER].stream(conversation_id))
        except BROKER_ERRORS:
            raise unavailable("the message broker") from None
        return await _pump(request, queue)


async def _pump(request: web.Request, queue: asyncio.Queue[Streamed]) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx must not buffer the stream
        }
    )
    await response.prepare(request)
    await response.write(b"retry: 2000\n: connected\n\n")
    while True:
        try:
            reply = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
        except TimeoutError:
            await response.write(b": keep-alive\n\n")
            continue
        if reply is None:  # the server is shutting down
            return response
        await response.write(encode_event(reply))
