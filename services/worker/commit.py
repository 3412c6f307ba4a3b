"""Committing a generated reply, once: the worker's only write path for a message it answered.

Two steps, both batched across every lane of the worker (one pipeline each, whoever is waiting):

1. `_DECIDE`, a Lua script, takes what must be decided atomically: a reply already stored (a
   redelivery, or a race: the first writer wins and the others get its reply), a conversation with
   a human (the reply is stored silenced, never sent), the fallback streak that escalates to a
   human, and starting that handoff. It stores the reply that stands. Its input is one JSON payload
   with named fields (`_payload`), plus the four keys it touches.
2. Only for the winners, the effects, in one pipeline: `_EFFECTS` per message (the stats writes
   `shared.stats.reply_writes` names, the memory, the operators' conversation log, the users
   seen) and the handoff index (`shared.handoff.queue_index`). A crash between the two steps
   loses these effects for that message (they are never applied twice: the redelivery finds the
   stored reply and applies nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from shared import handoff, stats
from shared.handoff import HandoffInfo
from shared.messages import InboundMessage, ReplyContent, ReplyMessage
from shared.names import Names
from shared.store import IDEMPOTENCY_TTL_SECONDS, REDIS_ERRORS, USERS_KEEP_SECONDS
from shared.telemetry import redis_span

log = logging.getLogger(__name__)

CONVERSATION_LOG_ENTRIES = 200
CONVERSATION_LOG_TTL_SECONDS = 7 * 24 * 3600
# What the bot says while a human has the conversation: nothing. It stands in for the reply that
# was not sent wherever one is stored, logged or announced, so that text never leaks.
SILENT_REPLY = ReplyContent(text="", engine="silenced", confidence=0.0, handoff=True)

SENT, STORED, SILENCED, ESCALATED = 0, 1, 2, 3
# KEYS: 1 the reply, 2 the conversation's handoff, 3 its fallback streak, 4 the message's attempts.
# Returns {SENT}, {STORED, the stored reply}, {SILENCED} or {ESCALATED}.
_DECIDE = """
local stored = redis.call('GET', KEYS[1])
if stored then
  return {1, stored}
end
local p = cjson.decode(ARGV[1])
local outcome, reply = 0, p.reply
if p.silenced or redis.call('EXISTS', KEYS[2]) == 1 then
  outcome, reply = 2, p.silenced_reply
elseif p.fallback then
  local streak = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], p.streak_ttl)
  if p.fallbacks_before_handoff > 0 and streak >= p.fallbacks_before_handoff then
    outcome, reply = 3, p.escalation
  end
elseif not p.merged then
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[1], reply, 'EX', p.reply_ttl)
if outcome == 3 or (outcome == 0 and p.handoff) then
  redis.call('SET', KEYS[2], p.handoff_info, 'EX', p.handoff_ttl)
  redis.call('DEL', KEYS[3])
end
redis.call('DEL', KEYS[4])
return {outcome}
"""

# The effects of one winning commit, applied as named in the payload (`_effects`): the stats slice
# writes that shared.stats.reply_writes lists, the users seen, the memory and the operators'
# conversation log. One command per message instead of some thirty.
# KEYS: 1 fine slice, 2 hour slice, 3 total stats, 4 users, 5 memory, 6 conversation log,
#       7 conversations index, 8 outbound order (a channel reply's place in its conversation's
#       queue of replies to send: services/gateway/delivery/order.py).
_EFFECTS = """
local p = cjson.decode(ARGV[1])
local stats = p.stats
for i = 1, 2 do
  local k = KEYS[i]
  for name, n in pairs(stats.add) do
    redis.call('HINCRBY', k, name, n)
  end
  redis.call('HINCRBYFLOAT', k, stats.sum_field, stats.latency)
  if tonumber(stats.latency) > tonumber(redis.call('HGET', k, stats.max_field) or '0') then
    redis.call('HSET', k, stats.max_field, stats.latency)
  end
  redis.call('EXPIRE', k, p.slice_ttls[i])
end
redis.call('HINCRBY', KEYS[3], stats.total, 1)
redis.call('ZADD', KEYS[4], p.now, p.user)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', p.now - p.users_keep)
if p.memory == 'reset' then
  redis.call('DEL', KEYS[5])
elseif p.memory == 'append' then
  redis.call('RPUSH', KEYS[5], p.user_turn, p.assistant_turn)
  redis.call('LTRIM', KEYS[5], -p.memory_length, -1)
  redis.call('EXPIRE', KEYS[5], p.memory_ttl)
end
redis.call('RPUSH', KEYS[6], p.log_entry)
redis.call('LTRIM', KEYS[6], -p.log_length, -1)
redis.call('EXPIRE', KEYS[6], p.log_ttl)
redis.call('ZADD', KEYS[7], p.now, p.conversation)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', p.now - p.log_ttl)
if p.outbound then
  redis.call('RPUSH', KEYS[8], p.message_id)
  redis.call('EXPIRE', KEYS[8], p.outbound_ttl)
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Timings:
    queue_wait_ms: float
    processing_ms: float
    end_to_end_ms: float


@dataclass(frozen=True, slots=True)
class Commit:
    """A generated reply, with what the reply policy needs to decide at commit."""

    message: InboundMessage
    reply: ReplyMessage
    timings: Timings
    # The customer's words this reply answers, remembered as one turn: the message's text, or the
    # texts of all the messages merged into this reply.
    user_text: str
    # Sent instead of this (fallback) reply when it is one fallback too many in a row.
    escalation: ReplyMessage | None = None
    # The conversation was with a human when the worker began: store the reply silenced regardless.
    silenced: bool = False

    @property
    def merged(self) -> bool:
        """Merged into another message's reply: the effects (handoff, reset, memory, fallback
        count) belong to that one."""
        return bool(self.reply.merged_into)


@dataclass(frozen=True, slots=True)
class Policy:
    memory_turns: int = 10
    memory_ttl_s: int = 86_400
    handoff_ttl_s: int = handoff.DEFAULT_TTL_SECONDS
    handoff_after_fallbacks: int = 3


@dataclass(slots=True)
class Committer:
    """Commits replies for every lane of the worker: what arrives while a batch is on the wire
    goes in the next batch, so many lanes share each round trip."""

    redis: Redis
    names: Names
    policy: Policy = field(default_factory=Policy)
    _pending: list[tuple[Commit, asyncio.Future[ReplyMessage]]] = field(default_factory=list)
    _flushing: asyncio.Task[None] | None = None
    _decide_sha: str = ""
    _effects_sha: str = ""

    def __post_init__(self) -> None:
        self._decide_sha = self.redis.register_script(_DECIDE).sha
        self._effects_sha = self.redis.register_script(_EFFECTS).sha

    async def commit(self, item: Commit) -> ReplyMessage:
        """Store the reply once; returns the reply that stands: the one given, the escalation sent
        instead, a copy marked `silenced` (not to be sent), or the reply another delivery of the
        same message committed first. Raises REDIS_ERRORS (nothing decided then)."""
        future: asyncio.Future[ReplyMessage] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="commit")
        return await future

    async def commit_all(self, items: Sequence[Commit]) -> list[ReplyMessage]:
        """Several commits in order (a burst, or a test's batch), in one round trip."""
        return list(await asyncio.gather(*(self.commit(item) for item in items)))

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    with redis_span("commit", **{"atendimento.commit.batch": len(batch)}):
                        standing = await self._commit([item for item, _ in batch])
                except REDIS_ERRORS as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, standing, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._flushing = None

    async def _commit(self, items: list[Commit]) -> list[ReplyMessage]:
        now = time.time()
        decisions = await self._decide(items, now)
        standing = [_standing(item, decision) for item, decision in zip(items, decisions, strict=True)]
        won = [(item, reply) for item, reply, d in zip(items, standing, decisions, strict=True) if d[0] != STORED]
        if won:
            await self._apply_effects(won, now)
        return standing

    async def _decide(self, items: list[Commit], now: float) -> list[list[Any]]:
        calls = [(self._keys(item), orjson.dumps(self._payload(item, now))) for item in items]
        try:
            return await self._run(self._decide_sha, calls)
        except NoScriptError:
            # Redis restarted or flushed its scripts. Deciding again is safe: a stored reply wins.
            await self.redis.script_load(_DECIDE)
            return await self._run(self._decide_sha, calls)

    async def _run(
        self, sha: str, calls: list[tuple[list[str], bytes]], extra: Callable[[Pipeline], None] | None = None
    ) -> list[Any]:
        # Plain EVALSHA: redis-py's pipelined Script objects would first ask SCRIPT EXISTS.
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, payload in calls:
                pipe.evalsha(sha, len(keys), *keys, payload)
            if extra is not None:
                extra(pipe)
            return await pipe.execute()

    def _keys(self, item: Commit) -> list[str]:
        message = item.message
        return [
            self.names.reply_key(message.message_id),
            self.names.handoff_key(message.conversation_id),
            self.names.fallback_streak_key(message.conversation_id),
            self.names.attempts_key(message.message_id),
        ]

    def _payload(self, item: Commit, now: float) -> dict[str, Any]:
        message, reply, escalation = item.message, item.reply, item.escalation
        info = HandoffInfo(
            channel=message.channel,
            user_id=message.user_id,
            gateway_id=message.gateway_id,
            metadata=message.metadata,
            reason=item.user_text,
            started_at=now,
        )
        return {
            "reply": reply.to_bytes().decode(),
            "silenced_reply": silenced(reply).to_bytes().decode(),
            "escalation": escalation.to_bytes().decode() if escalation else "",
            "reply_ttl": IDEMPOTENCY_TTL_SECONDS,
            "silenced": item.silenced,
            "merged": item.merged,
            "handoff": reply.reply.handoff and not item.merged,
            "fallback": escalation is not None and not item.merged,
            "fallbacks_before_handoff": self.policy.handoff_after_fallbacks,
            "streak_ttl": self.policy.memory_ttl_s,
            "handoff_info": info.to_bytes().decode(),
            "handoff_ttl": self.policy.handoff_ttl_s,
        }

    async def _apply_effects(self, won: list[tuple[Commit, ReplyMessage]], now: float) -> None:
        """The second step. Redis failing here must not undo the first: wait until it answers."""
        calls = [self._effects(item, reply, now) for item, reply in won]
        handoffs = [
            item.message.conversation_id
            for item, reply in won
            if reply.reply.handoff and not reply.silenced and not item.merged
        ]

        def index_handoffs(pipe: Pipeline) -> None:
            for conversation in handoffs:
                handoff.queue_index(pipe, self.names, conversation, now, self.policy.handoff_ttl_s)

        attempt = 0
        while True:
            try:
                try:
                    await self._run(self._effects_sha, calls, index_handoffs)
                except NoScriptError:
                    await self.redis.script_load(_EFFECTS)
                    continue
                return
            except REDIS_ERRORS as exc:
                attempt += 1
                if attempt == 1:
                    log.warning("Redis unavailable, holding the commit's stats and memory: %s", exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))

    def _effects(self, item: Commit, reply: ReplyMessage, now: float) -> tuple[list[str], bytes]:
        names, message, timings = self.names, item.message, item.timings
        conversation = message.conversation_id
        content = reply.reply
        usage = item.reply.reply.usage  # the tokens the generated reply cost, whatever stands
        (fine, fine_ttl), (hour, hour_ttl) = stats.slice_keys(names, now)
        writes = stats.reply_writes(
            stats.ReplyCounts(
                channel=message.channel,
                end_to_end_ms=timings.end_to_end_ms,
                queue_wait_ms=timings.queue_wait_ms,
                processing_ms=timings.processing_ms,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                silenced=reply.silenced,
                handoff=content.handoff and not reply.silenced and not item.merged,
                merged=item.merged,
            )
        )
        memory = "keep"
        if not reply.silenced and not item.merged:
            memory = "reset" if content.reset else "append" if self.policy.memory_turns > 0 else "keep"
        payload = {
            "stats": writes,
            "slice_ttls": [fine_ttl, hour_ttl],
            "now": now,
            "user": f"{message.channel}:{message.user_id}",
            "users_keep": USERS_KEEP_SECONDS,
            "memory": memory,
            "user_turn": _turn("user", item.user_text).decode(),
            "assistant_turn": _turn("assistant", content.text).decode(),
            "memory_length": 2 * self.policy.memory_turns,
            "memory_ttl": self.policy.memory_ttl_s,
            "log_entry": orjson.dumps(_log_entry(item, reply, now)).decode(),
            "log_length": CONVERSATION_LOG_ENTRIES,
            "log_ttl": CONVERSATION_LOG_TTL_SECONDS,
            "conversation": conversation,
            "message_id": message.message_id,
            # A reply the delivery consumers will send (not the web's, not one held back).
            "outbound": message.channel != "web" and not reply.silenced and not item.merged,
            "outbound_ttl": IDEMPOTENCY_TTL_SECONDS,
        }
        keys = [
            fine,
            hour,
            names.stats_total_key,
            names.users_key,
            names.memory_key(conversation),
            names.conversation_log_key(conversation),
            names.conversations_key,
            names.outbound_order_key(conversation),
        ]
        return keys, orjson.dumps(payload)


def silenced(reply: ReplyMessage) -> ReplyMessage:
    return replace(reply, reply=SILENT_REPLY, silenced=True)


def _standing(item: Commit, decision: list[Any]) -> ReplyMessage:
    outcome = int(decision[0])
    if outcome == STORED:
        return ReplyMessage.from_bytes(decision[1])
    if outcome == SILENCED:
        return silenced(item.reply)
    if outcome == ESCALATED and item.escalation is not None:
        return item.escalation
    return item.reply


def _turn(role: str, text: str) -> bytes:
    return orjson.dumps({"role": role, "text": text})


def _log_entry(item: Commit, reply: ReplyMessage, now: float) -> dict[str, Any]:
    message, timings = item.message, item.timings
    entry: dict[str, Any] = {
        "message_id": message.message_id,
        "channel": message.channel,
        "user_id": message.user_id,
        "text": message.text,
        "accepted_at": message.accepted_at_ms / 1000,
        "replied_at": now,
        "latency_ms": round(timings.end_to_end_ms, 2),
        "queue_wait_ms": round(timings.queue_wait_ms, 2),
        "processing_ms": round(timings.processing_ms, 2),
    }
    if item.merged:
        entry["merged_into"] = reply.merged_into
    if reply.silenced:
        entry["silenced"] = True
    entry["reply"] = reply.reply.to_dict()
    return entry
