"""The conversations list of the admin area: newest first, a page at a time, searchable by
conversation or user id, each with its channel, its last message and whether a person has it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from services.monitor.keys import STORE
from services.monitor.problems import unreachable
from shared.store import REDIS_ERRORS
from shared.web import Problem

PAGE_SIZE = 20
PREVIEW_CHARS = 120
QUERY_MAX = 100
MAX_PAGE = 10_000
SCAN_COUNT = 1000
GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True, slots=True)
class ConversationPage:
    items: list[dict[str, Any]]
    query: str
    page: int
    has_more: bool

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "query": self.query, "page": self.page, "has_more": self.has_more}


def parse_request(query: str, page: str) -> tuple[str, int]:
    """The search text and page number of a request, checked."""
    query = query.strip()
    if len(query) > QUERY_MAX:
        raise Problem(400, f"q: at most {QUERY_MAX} characters")
    try:
        number = int(page or "1")
    except ValueError:
        raise Problem(400, "page: must be a whole number from 1") from None
    if not 1 <= number <= MAX_PAGE:
        raise Problem(400, f"page: must be a whole number from 1 to {MAX_PAGE}")
    return query, number


async def checked_page(app: web.Application, query: str, page: int) -> ConversationPage:
    """A page for a request: Redis down is a 503 naming it."""
    try:
        return await conversation_page(app, query, page)
    except REDIS_ERRORS:
        raise unreachable("Redis", "conversations cannot be listed") from None


async def conversation_page(app: web.Application, query: str, page: int) -> ConversationPage:
    """Raises REDIS_ERRORS when Redis cannot be read."""
    store = app[STORE]
    redis, names = store.redis, store.names
    start = (page - 1) * PAGE_SIZE
    if query:
        # A search walks the index (ZSCAN, in steps): fine for an operator's look-up.
        pattern = "*" + GLOB_SPECIAL.sub(r"\\\1", query) + "*"
        found = [
            (str(m), float(s))
            async for m, s in redis.zscan_iter(names.conversations_key, match=pattern, count=SCAN_COUNT)
        ]
        found.sort(key=lambda item: item[1], reverse=True)
        window = found[start : start + PAGE_SIZE + 1]
    else:
        members = await redis.zrevrange(names.conversations_key, start, start + PAGE_SIZE, withscores=True)
        window = [(str(member[0]), float(member[1])) for member in members]
    shown = window[:PAGE_SIZE]
    ids = [conversation_id for conversation_id, _ in shown]
    if not ids:
        return ConversationPage([], query, page, has_more=False)
    async with redis.pipeline(transaction=False) as pipe:
        for conversation_id in ids:
            pipe.lindex(names.conversation_log_key(conversation_id), -1)
        pipe.mget([names.handoff_key(conversation_id) for conversation_id in ids])
        results = await pipe.execute()
    last_entries, handoffs = results[:-1], results[-1]
    items = [
        _item(conversation_id, last_activity, last, handoff is not None)
        for (conversation_id, last_activity), last, handoff in zip(shown, last_entries, handoffs, strict=True)
    ]
    return ConversationPage(items, query, page, has_more=len(window) > PAGE_SIZE)


def _item(conversation_id: str, last_activity: float, raw: str | bytes | None, handed_off: bool) -> dict[str, Any]:
    entry: dict[str, Any] = orjson.loads(raw) if raw else {}
    reply = entry.get("reply") or {}
    text = str(entry.get("text") or reply.get("text") or "")
    return {
        "conversation_id": conversation_id,
        "last_activity": last_activity,
        "channel": entry.get("channel"),
        "name": entry.get("name") or entry.get("user_id") or "",
        "preview": text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…",
        "handed_off": handed_off,
    }
