"""`GET /v1/conversations/{conversation_id}/events`: a conversation's replies as Server-Sent Events.

Only for the holder of the conversation's token. Each event is one `event: reply` line and one
`data:` line of JSON (which never holds a raw line break), so nothing in a reply or an id can
start an event of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import orjson
from aiohttp import web

from services.gateway.api_keys import caller_key
from services.gateway.intake import unavailable
from services.gateway.keys import ROUTER, SETTINGS, STREAM_SLOTS, TOKENS
from services.gateway.replies import Streamed
from services.gateway.validation import parse_conversation_id
from services.gateway.web_conversations import forbidden, presented_token, public_answer, public_id
from shared.broker import BROKER_ERRORS
from shared.commands import COMMAND_ENGINE
from shared.messages import ReplyDelta, ReplyMessage
from shared.store import REDIS_ERRORS
from shared.web import client_address

KEEPALIVE_SECONDS = 15.0  # below the idle timeouts of common proxies (nginx: 60 s)


def encode_event(reply: ReplyMessage | ReplyDelta, token: str) -> bytes:
    """One event: an `event:` line and one JSON `data:` line (no raw id ever reaches the stream)."""
    if isinstance(reply, ReplyDelta):  # the reply's text so far; its `reply` event follows
        delta = {**reply.public_dict(), "message_id": public_id(reply.message_id)}
        delta["conversation_id"] = public_id(reply.conversation_id)
        return b"event: delta\ndata: " + orjson.dumps(delta) + b"\n\n"
    return b"event: reply\ndata: " + orjson.dumps(public_answer(reply, token)) + b"\n\n"


async def conversation_events(request: web.Request) -> web.StreamResponse:
    public_conversation = parse_conversation_id(request.match_info["conversation_id"])
    token = presented_token(request)
    try:
        conversation = await request.app[TOKENS].open(public_conversation, token, caller_key(request))
    except REDIS_ERRORS:
        raise unavailable("Redis") from None
    if conversation is None or token is None:
        raise forbidden()
    address = client_address(request, request.app[SETTINGS].trusted_proxies)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(request.app[STREAM_SLOTS].hold(address))
        try:
            queue = await stack.enter_async_context(request.app[ROUTER].stream(conversation))
        except BROKER_ERRORS:
            raise unavailable("the message broker") from None
        return await _pump(request, queue, token, _Opener(request, conversation, token))


@dataclass(frozen=True, slots=True)
class _Opener:
    """Whether the stream's token still opens its conversation: asked after a command's reply
    only (a `/reset` ends the tokens; Redis is not asked for every reply)."""

    request: web.Request
    conversation: str
    token: str

    async def still_opens(self, reply: Streamed) -> bool:
        if not isinstance(reply, ReplyMessage) or reply.reply.engine != COMMAND_ENGINE:
            return True
        try:
            return await self.request.app[TOKENS].verify(self.conversation, self.token, caller_key(self.request))
        except REDIS_ERRORS:
            return True  # unknown: the stream goes on, as it would have


async def _pump(
    request: web.Request, queue: asyncio.Queue[Streamed], token: str, opener: _Opener
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx must not buffer the stream
        }
    )
    await response.prepare(request)
    try:
        await response.write(b"retry: 2000\n: connected\n\n")
        while True:
            try:
                reply = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if reply is None:  # the server is shutting down
                return response
            await response.write(encode_event(reply, token))
            if not await opener.still_opens(reply):
                # `/reset` ended the token this stream was opened with: the holder of the fresh
                # one (the answer to the /reset brought it) opens the stream again.
                return response
    except ConnectionResetError:
        return response  # the browser closed the stream: the normal end of one, not an error
