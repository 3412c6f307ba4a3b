"""What the admin area reads and does, shared by its HTML pages and its JSON API.

Every action (replay or discard a dead letter, reply as agent, release to the bot) is written to the audit
log with its outcome, whether it succeeded or not.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from aiohttp import web

from services.monitor.admin import inbox
from services.monitor.admin.conversations import conversation_page
from services.monitor.admin.outbound import deliveries
from services.monitor.audit import Actor
from services.monitor.deadletters import DeadLetter, NotFound, ReplayError
from services.monitor.health import health_json
from services.monitor.keys import AUDIT, BROKER, CONVERSATIONS, DEAD_LETTERS, HANDOFFS, SETTINGS, STORE, VIEW
from services.monitor.observation import observe, stats_body
from services.monitor.outcomes import stats_block
from services.monitor.problems import unreachable
from services.monitor.stats_reader import last_24h
from shared.broker import BROKER_ERRORS
from shared.handoff import HandoffInfo
from shared.messages import ReplyContent, ReplyMessage
from shared.store import CONVERSATION_LOG_ENTRIES, REDIS_ERRORS
from shared.web import Problem

T = TypeVar("T")

TEXT_MAX = 4096
ID_MAX = 256
RECENT_AUDIT = 20
HANDOFFS_PER_PAGE = 25
UNAVAILABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, *BROKER_ERRORS)


async def _or_none(operation: Awaitable[T]) -> T | None:
    """A part of the dashboard whose source is down shows as unavailable, not as an error page."""
    try:
        return await operation
    except UNAVAILABLE:
        return None


def handoff_dict(conversation_id: str, info: HandoffInfo) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "channel": info.channel,
        "user_id": info.user_id,
        "name": inbox.customer_name(info),
        "reason": info.reason,
        "started_at": info.started_at,
        # Asked for outside business hours: the customer was promised a person from then on.
        "away_until": info.away_until or None,
    }


def handoffs_page(raw: str | None) -> int:
    """The dashboard's page of handoffs (`?handoffs_page=`, from 1); 400 for anything else."""
    try:
        number = int(raw or 1)
    except ValueError:
        number = 0
    if not 1 <= number <= 100_000:
        raise Problem(400, "handoffs_page: must be a page number from 1")
    return number


async def overview(app: web.Application, page: int = 1) -> dict[str, Any]:
    """Everything the dashboard shows, in one consistent read; `page` of the handoffs."""
    observation = await observe(app[VIEW])
    depth = observation.health["checks"]["rabbitmq"].get("dead_letters")
    letters, handoffs, conversations, audit, outcomes = await asyncio.gather(
        _or_none(app[DEAD_LETTERS].peek(depth)),
        _or_none(app[HANDOFFS].page((page - 1) * HANDOFFS_PER_PAGE, HANDOFFS_PER_PAGE)),
        _or_none(_recent_conversations(app)),
        _or_none(app[AUDIT].recent(RECENT_AUDIT)),
        stats_block(app[CONVERSATIONS]),
    )
    return {
        "observation": observation,
        "stats": stats_body(observation, app[VIEW].started_at, outcomes),
        "business": app[SETTINGS].business_hours.describe(observation.timestamp),
        "day": last_24h(observation.raw) if observation.raw is not None else None,
        "dead_letters": letters,
        "handoffs": None if handoffs is None else [handoff_dict(cid, info) for cid, info in handoffs.items.items()],
        "handoffs_paging": None
        if handoffs is None
        else {"page": handoffs.number, "pages": handoffs.pages, "total": handoffs.total},
        "conversations": conversations,
        "audit": audit,
    }


def overview_json(data: dict[str, Any]) -> dict[str, Any]:
    letters: list[DeadLetter] | None = data["dead_letters"]
    return {
        "stats": data["stats"],
        "health": health_json(data["observation"].health, data["stats"]["timestamp"]),
        "last_24h": data["day"],
        "dead_letters": None if letters is None else [letter.to_dict() for letter in letters],
        "handoffs": data["handoffs"],
        "handoffs_paging": data["handoffs_paging"],
        "conversations": data["conversations"],
        "audit": data["audit"],
        "business": data["business"],
    }


async def _recent_conversations(app: web.Application) -> list[dict[str, Any]]:
    """The first page of the conversations list (admin/conversations.py), for the dashboard."""
    return (await conversation_page(app, "", 1)).items


async def conversation(app: web.Application, actor: Actor, conversation_id: str) -> dict[str, Any]:
    conversation_id = identifier("conversation_id", conversation_id)
    store = app[STORE]
    try:
        raw_entries, info = await asyncio.gather(
            # The newest entries: the list is trimmed only once it holds twice as many (worker/commit.py).
            store.redis.lrange(store.names.conversation_log_key(conversation_id), -CONVERSATION_LOG_ENTRIES, -1),
            app[HANDOFFS].get(conversation_id),
        )
    except REDIS_ERRORS:
        raise unreachable("Redis", "the conversation cannot be read") from None
    if not raw_entries and info is None:
        raise Problem(404, f"conversation_id: no conversation {conversation_id!r} is logged")
    # Reading a customer's conversation is access to personal data: it is audited like an action.
    await app[AUDIT].record(actor, "view_conversation", conversation_id)
    entries = [orjson.loads(raw) for raw in raw_entries]
    return {
        "conversation_id": conversation_id,
        "name": inbox.customer_name(info) if info else _logged_name(entries),
        "handoff": handoff_dict(conversation_id, info) if info else None,
        "assignee": await _or_none(inbox.assignee(app, conversation_id)) if info else None,
        "entries": entries,
        # What the channel reported of each message sent (shared/receipts.py), by message id.
        "deliveries": await deliveries(app, entries),
    }


def _logged_name(entries: list[dict[str, Any]]) -> str:
    """The customer's name as the latest logged message gave it, else their id."""
    for entry in reversed(entries):
        if entry.get("name"):
            return str(entry["name"])
    return next((str(entry["user_id"]) for entry in entries if entry.get("user_id")), "")


async def replay(app: web.Application, actor: Actor, message_id: Any) -> DeadLetter:
    """Send a dead letter back where it came from (its `id`, named `message_id` in the forms)."""
    return await _dead_letter_action(app, actor, "replay_dead_letter", message_id)


async def discard(app: web.Application, actor: Actor, message_id: Any) -> DeadLetter:
    """Remove a dead letter for good (a poison message nobody can process)."""
    return await _dead_letter_action(app, actor, "discard_dead_letter", message_id)


async def _dead_letter_action(app: web.Application, actor: Actor, action: str, message_id: Any) -> DeadLetter:
    message_id = identifier("message_id", message_id)
    audit, letters = app[AUDIT], app[DEAD_LETTERS]
    try:
        if action == "replay_dead_letter":
            letter = await letters.replay(message_id)
        else:
            letter = await letters.discard(message_id)
    except ReplayError as exc:
        await audit.record(actor, action, message_id, "refused", str(exc))
        raise Problem(404 if isinstance(exc, NotFound) else 409, str(exc)) from None
    except UNAVAILABLE as exc:
        await audit.record(actor, action, message_id, "failed", str(exc) or type(exc).__name__)
        raise unreachable("RabbitMQ or Redis", "the dead letter was left as it was") from None
    why = letter.problem or letter.reason
    await audit.record(actor, action, message_id, "ok", f"{letter.kind} from {letter.queue or 'unknown'} ({why})")
    return letter


async def reply_as_agent(app: web.Application, actor: Actor, conversation_id: Any, text: Any) -> ReplyMessage:
    """Send an agent's words to the customer through the same path as the bot's replies."""
    conversation_id = identifier("conversation_id", conversation_id)
    if not isinstance(text, str) or not text.strip():
        raise Problem(400, "text: required, a non-blank string")
    if len(text) > TEXT_MAX:
        raise Problem(400, f"text: at most {TEXT_MAX} characters")
    handoffs, store, broker, audit = app[HANDOFFS], app[STORE], app[BROKER], app[AUDIT]
    try:
        info = await handoffs.get(conversation_id)
        if info is None:
            await audit.record(actor, "reply_as_agent", conversation_id, "refused", "not handed to a human")
            raise Problem(409, f"conversation_id: {conversation_id!r} is not handed to a human")
        # The first agent to reply takes the conversation; another one's reply is refused.
        holder = await inbox.take(app, actor, conversation_id)
        if holder != actor.name:
            await audit.record(actor, "reply_as_agent", conversation_id, "refused", f"assigned to {holder}")
            raise Problem(409, f"conversation_id: {conversation_id!r} is assigned to {holder}")
        reply = _agent_reply(conversation_id, info, text.strip())
        # The same path as the bot's replies: delivery queues for channels, SSE streams for the web.
        await broker.publish_reply(reply)
        await store.log_conversation(conversation_id, _agent_entry(reply, actor))
        # A conversation the agent is answering is not abandoned: renew the handoff's expiry (and
        # its place in the queue, which is pruned by it). A person has it now, even before the
        # opening promised out of hours.
        await handoffs.start(conversation_id, replace(info, away_until=0.0))
        # The first reply after the handoff: how long the customer waited for a person (counted
        # from the next opening when it was asked for outside business hours).
        await app[CONVERSATIONS].agent_replied(conversation_id, max(info.started_at, info.away_until))
    except UNAVAILABLE as exc:
        await audit.record(actor, "reply_as_agent", conversation_id, "failed", str(exc) or type(exc).__name__)
        raise unreachable("RabbitMQ or Redis", "the reply was not sent") from None
    # Which reply and how long, never its words: those are the customer's business, kept in the
    # conversation log (with its TTL), not in an audit trail that is kept and shipped for years.
    await audit.record(actor, "reply_as_agent", conversation_id, "ok", f"{reply.message_id}: {len(text.strip())} chars")
    return reply


async def release(app: web.Application, actor: Actor, conversation_id: Any) -> None:
    conversation_id = identifier("conversation_id", conversation_id)
    audit = app[AUDIT]
    try:
        released = await app[HANDOFFS].release(conversation_id)
        await inbox.forget(app, conversation_id)
        if released:  # the conversation ends: the customer is asked to rate the agent's work
            await app[CONVERSATIONS].released(conversation_id)
    except REDIS_ERRORS as exc:
        await audit.record(actor, "release_to_bot", conversation_id, "failed", str(exc) or type(exc).__name__)
        raise unreachable("Redis", "nothing was released") from None
    if not released:
        await audit.record(actor, "release_to_bot", conversation_id, "refused", "not handed to a human")
        raise Problem(404, f"conversation_id: {conversation_id!r} is not handed to a human")
    await audit.record(actor, "release_to_bot", conversation_id)


def identifier(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Problem(400, f"{field}: required, a non-blank string")
    if len(value) > ID_MAX:
        raise Problem(400, f"{field}: at most {ID_MAX} characters")
    return value


def _agent_reply(conversation_id: str, info: HandoffInfo, text: str) -> ReplyMessage:
    return ReplyMessage(
        message_id=f"agent-{uuid.uuid4().hex}",
        conversation_id=conversation_id,
        user_id=info.user_id,
        channel=info.channel,
        reply=ReplyContent(text=text, engine="agent", confidence=1.0, handoff=True, kind="agent"),
        latency_ms=0.0,
        gateway_id=info.gateway_id,
        metadata=info.metadata,
    )


def _agent_entry(reply: ReplyMessage, actor: Actor) -> dict[str, Any]:
    now = time.time()
    return {
        "message_id": reply.message_id,
        "kind": "agent",
        "agent": actor.name,
        "channel": reply.channel,
        "user_id": reply.user_id,
        "text": "",
        "accepted_at": now,
        "replied_at": now,
        "reply": reply.reply.to_dict(),
        "latency_ms": None,
        "queue_wait_ms": None,
        "processing_ms": None,
    }
