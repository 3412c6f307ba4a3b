"""Conversations handed to a human agent: the state the worker and the admin area share.

- The worker's commit (services/worker/commit.py) starts one when a customer asks for a human (its
  key set and listed in the commit script, with the writes `queue_index` names), and silences its
  replies while one lives.
- The admin area lists them (`list_active()`), replies as an agent to the address `get()` returns,
  and gives the conversation back to the bot with `release()`.
- A handoff expires by itself `ttl_s` (HANDOFF_TTL_SECONDS) after it began to wait for a person,
  so a conversation nobody picked up does not stay silent forever.

One Redis key per conversation holds the `HandoffInfo` (with the expiry); a sorted set by the time
each one's expiry counts from (its start or its renewal by an agent's reply, or the next opening
when asked for outside business hours) indexes them for listing and is pruned of the expired ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.messages import Channel, MessageFormatError, parse_channel
from shared.names import Names

DEFAULT_TTL_SECONDS = 4 * 3600


@dataclass(frozen=True, slots=True)
class HandoffInfo:
    """What an agent needs to reply in the conversation: the same addressing the bot's replies use."""

    channel: Channel
    user_id: str
    gateway_id: str = ""
    # Channel addressing copied from the inbound message (phone_number_id, chat_id, ...).
    metadata: dict[str, Any] = field(default_factory=dict)
    # The customer's words that asked for a human, shown to the agent.
    reason: str = ""
    started_at: float = field(default_factory=time.time)
    # Asked for outside business hours: until this epoch time nobody is there, and the conversation
    # waits in the queue, the bot silent as for any handoff (0: a person is there now).
    away_until: float = 0.0

    def counted_from(self, now: float) -> float:
        """Where the expiry of the handoff started or renewed at `now` counts from: now, or the
        next opening when people are away. Its score in the agents' queue, which is pruned by it."""
        return max(now, self.away_until)

    def lifetime(self, ttl_s: int, now: float) -> int:
        """Seconds the handoff lives from `now`: `ttl_s` once people are back, so one asked for
        on a Friday night still waits for the agents on Monday morning."""
        return ttl_s + math.ceil(self.counted_from(now) - now)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "channel": self.channel,
                "user_id": self.user_id,
                "gateway_id": self.gateway_id,
                "metadata": self.metadata,
                "reason": self.reason,
                "started_at": self.started_at,
                "away_until": self.away_until,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> HandoffInfo:
        try:
            data = orjson.loads(raw)
            return cls(
                channel=parse_channel(data["channel"]),
                user_id=str(data["user_id"]),
                gateway_id=str(data.get("gateway_id", "")),
                metadata=dict(data.get("metadata") or {}),
                reason=str(data.get("reason", "")),
                started_at=float(data["started_at"]),
                away_until=float(data.get("away_until") or 0.0),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MessageFormatError(f"handoff: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class HandoffPage:
    items: dict[str, HandoffInfo]
    total: int
    offset: int
    limit: int

    @property
    def number(self) -> int:
        return self.offset // self.limit + 1

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.limit))


@dataclass(frozen=True, slots=True)
class Handoffs:
    redis: Redis
    names: Names
    ttl_s: int = DEFAULT_TTL_SECONDS

    async def start(self, conversation_id: str, info: HandoffInfo) -> None:
        """Hand the conversation to a human (again: a repeated request renews the expiry)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.names.handoff_key(conversation_id), info.to_bytes(), ex=info.lifetime(self.ttl_s, now))
            queue_index(pipe, self.names, conversation_id, info.counted_from(now), self.ttl_s)
            await pipe.execute()

    async def release(self, conversation_id: str) -> bool:
        """Give the conversation back to the bot; False when it was not handed off."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.names.handoff_key(conversation_id))
            pipe.zrem(self.names.handoffs_key, conversation_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def active(self, conversation_id: str) -> bool:
        return bool(await self.redis.exists(self.names.handoff_key(conversation_id)))

    async def get(self, conversation_id: str) -> HandoffInfo | None:
        raw = await self.redis.get(self.names.handoff_key(conversation_id))
        return HandoffInfo.from_bytes(raw) if raw else None

    async def page(self, offset: int, limit: int) -> HandoffPage:
        """One page of the live handoffs, most recent first, and how many there are in all: a
        flood of new ones never hides the older ones, they are further on."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.names.handoffs_key, "-inf", time.time() - self.ttl_s)
            pipe.zcard(self.names.handoffs_key)
            pipe.zrevrange(self.names.handoffs_key, offset, offset + limit - 1)
            _, total, raw_members = await pipe.execute()
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in raw_members]
        raws = await self.redis.mget([self.names.handoff_key(cid) for cid in members]) if members else []
        items = {cid: HandoffInfo.from_bytes(raw) for cid, raw in zip(members, raws, strict=True) if raw}
        return HandoffPage(items=items, total=int(total), offset=offset, limit=limit)

    async def list_active(self, limit: int = 100, *, oldest_first: bool = False) -> dict[str, HandoffInfo]:
        """The live handoffs, most recent first; or, `oldest_first`, those whose wait counts from
        longest ago (the agents' inbox: over `limit`, the newest are the ones left out)."""
        if oldest_first:
            async with self.redis.pipeline(transaction=False) as pipe:
                # The expired ones first, or they would take the places of the longest waiting.
                pipe.zremrangebyscore(self.names.handoffs_key, "-inf", time.time() - self.ttl_s)
                pipe.zrange(self.names.handoffs_key, 0, limit - 1)
                _, raw_members = await pipe.execute()
        else:
            raw_members = await self.redis.zrevrange(self.names.handoffs_key, 0, limit - 1)
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in raw_members]
        if not members:
            return {}
        raws = await self.redis.mget([self.names.handoff_key(cid) for cid in members])
        expired = [cid for cid, raw in zip(members, raws, strict=True) if not raw]
        if expired:
            await self.redis.zrem(self.names.handoffs_key, *expired)
        return {cid: HandoffInfo.from_bytes(raw) for cid, raw in zip(members, raws, strict=True) if raw}


def queue_index(pipe: Pipeline, names: Names, conversation_id: str, counted_from: float, ttl_s: int) -> None:
    """List a started (or renewed) handoff for the admin area, by where its expiry counts from: the
    entries older than the TTL are the expired ones. The worker's commit script makes the same two
    writes itself, atomically with the decision to hand over: services/worker/commit.py."""
    pipe.zadd(names.handoffs_key, {conversation_id: counted_from})
    pipe.zremrangebyscore(names.handoffs_key, "-inf", time.time() - ttl_s)
