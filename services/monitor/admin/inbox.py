"""The agents' inbox: the conversations waiting for a person, who has taken which, and the stream
that tells an open admin page at once when a new one arrives.

- `queue()` lists the live handoffs, oldest waiting first, each with the customer's name as the
  channel gave it (WhatsApp profile name, Telegram first name; else the user id), the channel,
  since when it waits, its last message and the agent who took it.
- "Assign to me" (`assign()`) takes a conversation for one agent (SET NX with the handoff's
  lifetime): another agent's reply is then refused (409), so two people never answer one
  customer. An agent's first reply takes an untaken conversation by itself; giving it back to the
  bot frees it.
- `/admin/events` is a Server-Sent Events stream: the monitor looks at the handoff index every
  POLL_S and sends `event: handoffs` when it changed (any monitor replica sees the same Redis), so
  a page shows a new handoff within a second, without a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from services.monitor.audit import Actor
from services.monitor.keys import AUDIT, HANDOFFS, STORE
from services.monitor.problems import unreachable
from shared.handoff import HandoffInfo
from shared.store import REDIS_ERRORS
from shared.web import Problem

# Set when the monitor stops: open streams end at once instead of holding the shutdown.
STOPPING = web.AppKey("inbox_stopping", asyncio.Event)
POLL_S = 0.5
KEEP_ALIVE_S = 15.0
QUEUE_LIMIT = 200
PREVIEW_CHARS = 140


@dataclass(frozen=True, slots=True)
class Waiting:
    """One conversation of the queue, as an agent reads it."""

    conversation_id: str
    name: str
    channel: str
    started_at: float
    last_message: str
    reason: str
    assignee: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "name": self.name,
            "channel": self.channel,
            "started_at": self.started_at,
            "last_message": self.last_message,
            "reason": self.reason,
            "assignee": self.assignee,
        }


def customer_name(info: HandoffInfo) -> str:
    """The name the channel gave, else the channel's id of the customer."""
    return str(info.metadata.get("name") or "") or info.user_id


async def queue(app: web.Application) -> list[Waiting]:
    """The live handoffs, the longest waiting first. Raises REDIS_ERRORS."""
    store = app[STORE]
    handoffs = await app[HANDOFFS].list_active(QUEUE_LIMIT, oldest_first=True)
    ids = list(handoffs)
    if not ids:
        return []
    async with store.redis.pipeline(transaction=False) as pipe:
        for conversation_id in ids:
            pipe.lindex(store.names.conversation_log_key(conversation_id), -1)
        pipe.mget([store.names.handoff_assignee_key(conversation_id) for conversation_id in ids])
        *lasts, assignees = await pipe.execute()
    items = [
        _waiting(conversation_id, handoffs[conversation_id], last, assignee)
        for conversation_id, last, assignee in zip(ids, lasts, assignees, strict=True)
    ]
    return sorted(items, key=lambda item: item.started_at)


def _waiting(conversation_id: str, info: HandoffInfo, raw: bytes | str | None, assignee: Any) -> Waiting:
    entry: dict[str, Any] = orjson.loads(raw) if raw else {}
    reply = entry.get("reply") or {}
    text = str(entry.get("text") or reply.get("text") or info.reason)
    return Waiting(
        conversation_id=conversation_id,
        name=customer_name(info),
        channel=info.channel,
        started_at=info.started_at,
        last_message=text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…",
        reason=info.reason,
        assignee=assignee.decode() if isinstance(assignee, bytes) else str(assignee or ""),
    )


async def checked_queue(app: web.Application) -> list[Waiting]:
    try:
        return await queue(app)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the inbox cannot be read") from None


async def assignee(app: web.Application, conversation_id: str) -> str:
    store = app[STORE]
    value = await store.redis.get(store.names.handoff_assignee_key(conversation_id))
    return value.decode() if isinstance(value, bytes) else str(value or "")


async def take(app: web.Application, actor: Actor, conversation_id: str) -> str:
    """The agent now holding the conversation: `actor`, unless another agent took it first."""
    store, ttl = app[STORE], app[HANDOFFS].ttl_s
    key = store.names.handoff_assignee_key(conversation_id)
    if await store.redis.set(key, actor.name, nx=True, ex=ttl):
        return actor.name
    holder = await assignee(app, conversation_id)
    if holder == actor.name:  # still theirs while they answer: it lasts as long as the handoff
        await store.redis.expire(key, ttl)
    return holder


async def assign(app: web.Application, actor: Actor, conversation_id: str) -> None:
    """ "Assign to me": 404 when nobody waits there, 409 when another agent has it; audited."""
    audit = app[AUDIT]
    try:
        if not await app[HANDOFFS].active(conversation_id):
            await audit.record(actor, "assign", conversation_id, "refused", "not handed to a human")
            raise Problem(404, f"conversation_id: {conversation_id!r} is not handed to a human")
        holder = await take(app, actor, conversation_id)
    except REDIS_ERRORS as exc:
        await audit.record(actor, "assign", conversation_id, "failed", str(exc) or type(exc).__name__)
        raise unreachable("Redis", "the conversation was not assigned") from None
    if holder != actor.name:
        await audit.record(actor, "assign", conversation_id, "refused", f"assigned to {holder}")
        raise Problem(409, f"conversation_id: {conversation_id!r} is already assigned to {holder}")
    await audit.record(actor, "assign", conversation_id)


async def forget(app: web.Application, conversation_id: str) -> None:
    """The conversation went back to the bot: nobody holds it any more."""
    store = app[STORE]
    await store.redis.delete(store.names.handoff_assignee_key(conversation_id))


# The stream ----------------------------------------------------------------------------------
async def _snapshot(app: web.Application) -> tuple[int, float]:
    """How many handoffs live, and the latest their expiries count from: a new one, an agent's reply
    (a renewal) or one expired changes it."""
    store = app[STORE]
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.zcard(store.names.handoffs_key)
        pipe.zrevrange(store.names.handoffs_key, 0, 0, withscores=True)
        count, newest = await pipe.execute()
    return int(count), float(newest[0][1]) if newest else 0.0


def install(app: web.Application) -> None:
    """The stop signal of the open streams."""
    app[STOPPING] = asyncio.Event()

    async def stop(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(stop)


async def events(request: web.Request) -> web.StreamResponse:
    """`event: handoffs` with `{"count", "newest_at"}` at once and whenever the queue changes."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    stopping = request.app[STOPPING]
    last: tuple[int, float] | None = None
    quiet_since = time.monotonic()
    try:
        await response.write(b"retry: 2000\n\n")
        while not stopping.is_set():
            try:
                now = await _snapshot(request.app)
            except REDIS_ERRORS:
                now = last or (0, 0.0)  # Redis blinking: the page keeps what it shows
            if now != last:
                data = orjson.dumps({"count": now[0], "newest_at": now[1]}).decode()
                await response.write(f"event: handoffs\ndata: {data}\n\n".encode())
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= KEEP_ALIVE_S:
                await response.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_S)
    except ConnectionResetError:
        pass  # the page was closed: the normal end of a stream
    return response
