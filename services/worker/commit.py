"""Committing a generated reply, once: the worker's only write path for a message it answered.

Two Lua scripts per message, sent together in one pipeline for every lane that is waiting (what
arrives while a batch is on the wire goes in the next one), so Redis runs each message's pair
back to back and a worker dying after sending leaves nothing half done:

1. `_DECIDE` takes only what must be decided atomically: a reply already stored (a redelivery, or
   a race: the first writer wins and the others get its reply), a conversation with a human (the
   reply is stored silenced, never sent), the fallback streak that escalates to a human (what a
   reply does to it is `Commit.streak`), and starting that handoff, listed for the admin area in
   the same step (`shared.handoff`), so no crash leaves a handoff running unlisted. It stores the
   reply that stands and leaves a marker with the outcome (`CommitOutcome`, by name). Its input is
   one JSON payload with named fields (`_payload`), plus the keys it touches.
2. `_EFFECTS` applies, under that marker only (so never twice), what the winning commit adds: the
   stats writes `shared.stats.reply_writes` names, the memory, the options the reply offers (the
   only ones a next message may choose: a reply without options clears them), the operators'
   conversation log, the users seen and the reply's place in the outbound order.

What the reply is (an answer, a question back, a fallback with its escalation, a hand-over, a reset)
is decided before, by the reply policy (services/worker/engines/policy.py); the commit only makes
atomic what must be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from services.worker.coalesce import Coalescer
from services.worker.state import OFFERED_TTL_SECONDS, Offered
from shared import conversations, handoff, stats
from shared.handoff import HandoffInfo
from shared.messages import InboundMessage, ReplyContent, ReplyMessage
from shared.names import Names
from shared.store import CONVERSATION_LOG_ENTRIES, CONVERSATION_LOG_TTL_SECONDS, IDEMPOTENCY_TTL_SECONDS
from shared.telemetry import redis_span

log = logging.getLogger(__name__)

# How long a user seen stays listed: the monitor counts the users of the last day, and an hour's margin.
USERS_KEEP_SECONDS = 25 * 3600
# What the bot says while a human has the conversation: nothing. It stands in for the reply that
# was not sent wherever one is stored, logged or announced, so that text never leaks.
SILENT_REPLY = ReplyContent(text="", engine="silenced", confidence=0.0, handoff=True, kind="handoff")


class CommitOutcome(StrEnum):
    """What `_DECIDE` decided, by name: what it returns, and what its marker keeps for `_EFFECTS`."""

    SENT = "sent"  # the reply given stands
    STORED = "stored"  # a reply was stored before (a redelivery, or another delivery won): it stands
    SILENCED = "silenced"  # a human has the conversation: the reply is stored silenced, never sent
    ESCALATED = "escalated"  # one fallback too many in a row: the escalation stands, a handoff starts


# What a reply does to its conversation's fallback streak (`Commit.streak`).
StreakStep = Literal["count", "keep", "end"]

# Long enough for the effects right behind the decision in the same pipeline, or a retry of both.
MARKER_TTL_SECONDS = 300
# KEYS: 1 the reply, 2 the conversation's handoff, 3 its fallback streak, 4 the message's attempts,
#       5 the commit's marker (the outcome, for `_EFFECTS` right after it in the same pipeline),
#       6 the handoffs listed for the admin area (shared.handoff; the same writes as `queue_index`).
# Returns {'stored', the stored reply}, or {outcome} for the other outcomes (CommitOutcome).
# The `#!lua` line makes Redis refuse the whole script up front when it is over `maxmemory`:
# without it, Redis checks memory only at a script's first write, which may be a DEL it allows.
_DECIDE = """#!lua
local stored = redis.call('GET', KEYS[1])
if stored then
  return {'stored', stored}
end
local p = cjson.decode(ARGV[1])
local outcome, reply = 'sent', p.reply
-- A person has the conversation, unless it was handed over outside business hours and they are
-- not back yet (shared.handoff HandoffInfo.with_person): then the bot keeps answering.
local held = redis.call('GET', KEYS[2])
if held then
  local away = cjson.decode(held).away_until
  held = not away or tonumber(away) <= p.now
end
if p.silenced or held then
  outcome, reply = 'silenced', p.silenced_reply
elseif p.streak == 'count' then
  local streak = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], p.streak_ttl)
  if p.fallbacks_before_handoff > 0 and streak >= p.fallbacks_before_handoff then
    outcome, reply = 'escalated', p.escalation
  end
elseif p.streak == 'end' then
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[1], reply, 'EX', p.reply_ttl)
if outcome == 'escalated' or (outcome == 'sent' and p.handoff) then
  redis.call('SET', KEYS[2], p.handoff_info, 'EX', p.handoff_ttl)
  redis.call('DEL', KEYS[3])
  redis.call('ZADD', KEYS[6], p.now, p.conversation)
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', p.now - p.handoff_ttl)
end
redis.call('DEL', KEYS[4])
redis.call('SET', KEYS[5], outcome, 'EX', p.marker_ttl)
return {outcome}
"""

# The effects of the commit `_DECIDE` just won (its marker says with which outcome; none: the reply
# was stored before, nothing to do), applied as named in the payload (`_effects`, one variant per
# possible outcome): the stats slice writes that shared.stats.reply_writes lists, the users seen,
# the memory, the options offered and the operators' conversation log. One command per message
# instead of some thirty.
# KEYS: 1 fine slice, 2 hour slice, 3 total stats, 4 users, 5 memory, 6 conversation log,
#       7 conversations index, 8 outbound order (a channel reply's place in its conversation's
#       queue of replies to send: services/gateway/delivery/order.py), 9 the commit's marker,
#       10 the options offered (services/worker/state.py `Offered`), 11-17 the conversation's
#       outcome, quiet timer and rating (shared/conversations.py `Keys.tracked`, `TRACK_LUA`).
_EFFECTS = (
    "#!lua\n"
    + conversations.TRACK_LUA
    + """
local outcome = redis.call('GET', KEYS[9])
if not outcome then
  return 0
end
redis.call('DEL', KEYS[9])
local p = cjson.decode(ARGV[1])
local v = p.variants[outcome]
local stats = v.stats
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
if v.memory == 'reset' then
  redis.call('DEL', KEYS[5])
elseif v.memory == 'append' then
  redis.call('RPUSH', KEYS[5], p.user_turn, v.assistant_turn)
  redis.call('LTRIM', KEYS[5], -p.memory_length, -1)
  redis.call('EXPIRE', KEYS[5], p.memory_ttl)
end
if v.offered == 'set' then
  redis.call('SET', KEYS[10], v.offered_state, 'EX', p.offered_ttl)
elseif v.offered == 'clear' then
  redis.call('DEL', KEYS[10])
end
redis.call('RPUSH', KEYS[6], v.log_entry)
redis.call('LTRIM', KEYS[6], -p.log_length, -1)
redis.call('EXPIRE', KEYS[6], p.log_ttl)
redis.call('ZADD', KEYS[7], p.now, p.conversation)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', p.now - p.log_ttl)
if v.outbound then
  redis.call('RPUSH', KEYS[8], p.message_id)
  redis.call('EXPIRE', KEYS[8], p.outbound_ttl)
end
if v.track then
  track({KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17]}, p.track, v.track)
end
return 1
"""
)


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

    @property
    def streak(self) -> StreakStep:
        """What this reply does to its conversation's fallback streak, which hands over to a human
        at HANDOFF_AFTER_FALLBACKS: a fallback that may escalate counts in it; a question back
        neither counts in it nor ends it (it is not a failure, and not an answer yet); any other
        reply ends it."""
        if self.merged:
            return "keep"
        if self.escalation is not None:
            return "count"
        return "keep" if self.reply.reply.kind == "clarify" else "end"


@dataclass(frozen=True, slots=True)
class CommitSettings:
    """How much the commit remembers and for how long, and when a fallback streak hands over."""

    memory_turns: int = 10
    memory_ttl_s: int = 86_400
    handoff_ttl_s: int = handoff.DEFAULT_TTL_SECONDS
    handoff_after_fallbacks: int = 3
    # When a conversation ends and is asked for a rating, and the days it is counted in.
    conversations: conversations.ConversationSettings = field(default_factory=conversations.ConversationSettings)


@dataclass(slots=True)
class Committer:
    """Commits replies for every lane of the worker: what arrives while a batch is on the wire
    goes in the next batch, so many lanes share each round trip."""

    redis: Redis
    names: Names
    settings: CommitSettings = field(default_factory=CommitSettings)
    # Epoch seconds now (a test's clock decides, e.g., whether people are back from an away handoff).
    clock: Callable[[], float] = time.time
    _batches: Coalescer[Commit, ReplyMessage] = field(init=False)
    _decide_sha: str = ""
    _effects_sha: str = ""

    def __post_init__(self) -> None:
        self._decide_sha = self.redis.register_script(_DECIDE).sha
        self._effects_sha = self.redis.register_script(_EFFECTS).sha
        self._batches = Coalescer(self._commit_batch, name="commit")

    async def commit(self, item: Commit) -> ReplyMessage:
        """Store the reply once; returns the reply that stands: the one given, the escalation sent
        instead, a copy marked `silenced` (not to be sent), or the reply another delivery of the
        same message committed first. Raises REDIS_ERRORS (nothing decided then)."""
        return await self._batches.submit(item)

    async def commit_all(self, items: Sequence[Commit]) -> list[ReplyMessage]:
        """Several commits in order (a burst, or a test's batch), in one round trip."""
        return list(await asyncio.gather(*(self.commit(item) for item in items)))

    async def _commit_batch(self, items: list[Commit]) -> list[ReplyMessage]:
        with redis_span("commit", **{"atendimento.commit.batch": len(items)}):
            return await self._commit(items)

    async def _commit(self, items: list[Commit]) -> list[ReplyMessage]:
        """Decide and apply the effects in one pipeline: Redis runs both scripts of a message
        back to back, so a worker dying after sending leaves nothing half done."""
        now = self.clock()
        calls: list[tuple[str, list[str], bytes]] = []
        for item in items:
            calls.append((self._decide_sha, self._keys(item), orjson.dumps(self._payload(item, now))))
            calls.append((self._effects_sha, *self._effects(item, now)))
        try:
            results = await self._run(calls)
        except NoScriptError:
            # Redis restarted or flushed its scripts. Running again is safe: a stored reply wins,
            # and effects apply only under the marker of a decision just won.
            await self.redis.script_load(_DECIDE)
            await self.redis.script_load(_EFFECTS)
            results = await self._run(calls)
        return [_standing(item, decision) for item, decision in zip(items, results[0::2], strict=True)]

    async def _run(self, calls: list[tuple[str, list[str], bytes]]) -> list[Any]:
        # Plain EVALSHA: redis-py's pipelined Script objects would first ask SCRIPT EXISTS.
        async with self.redis.pipeline(transaction=False) as pipe:
            for sha, keys, payload in calls:
                pipe.evalsha(sha, len(keys), *keys, payload)
            return await pipe.execute()

    def _keys(self, item: Commit) -> list[str]:
        message = item.message
        return [
            self.names.reply_key(message.message_id),
            self.names.handoff_key(message.conversation_id),
            self.names.fallback_streak_key(message.conversation_id),
            self.names.attempts_key(message.message_id),
            self.names.commit_marker_key(message.message_id),
            self.names.handoffs_key,
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
            away_until=max(reply.reply.away_until, escalation.reply.away_until if escalation else 0.0),
        )
        return {
            "reply": reply.to_bytes().decode(),
            "silenced_reply": silenced(reply).to_bytes().decode(),
            "escalation": escalation.to_bytes().decode() if escalation else "",
            "reply_ttl": IDEMPOTENCY_TTL_SECONDS,
            "silenced": item.silenced,
            "handoff": reply.reply.handoff and not item.merged,
            "streak": item.streak,
            "fallbacks_before_handoff": self.settings.handoff_after_fallbacks,
            "streak_ttl": self.settings.memory_ttl_s,
            "handoff_info": info.to_bytes().decode(),
            "handoff_ttl": self.settings.handoff_ttl_s,
            "conversation": message.conversation_id,
            "now": now,
            "marker_ttl": MARKER_TTL_SECONDS,
        }

    def _effects(self, item: Commit, now: float) -> tuple[list[str], bytes]:
        names, message = self.names, item.message
        conversation = message.conversation_id
        (fine, fine_ttl), (hour, hour_ttl) = stats.slice_keys(names, now)
        variants = {
            CommitOutcome.SENT.value: self._variant(item, item.reply, now),
            CommitOutcome.SILENCED.value: self._variant(item, silenced(item.reply), now),
        }
        if item.escalation is not None:
            variants[CommitOutcome.ESCALATED.value] = self._variant(item, item.escalation, now)
        payload = {
            "variants": variants,
            "slice_ttls": [fine_ttl, hour_ttl],
            "now": now,
            "user": f"{message.channel}:{message.user_id}",
            "users_keep": USERS_KEEP_SECONDS,
            "user_turn": _turn("user", item.user_text).decode(),
            "memory_length": 2 * self.settings.memory_turns,
            "memory_ttl": self.settings.memory_ttl_s,
            "offered_ttl": OFFERED_TTL_SECONDS,
            "log_length": CONVERSATION_LOG_ENTRIES,
            "log_ttl": CONVERSATION_LOG_TTL_SECONDS,
            "conversation": conversation,
            "message_id": message.message_id,
            "outbound_ttl": IDEMPOTENCY_TTL_SECONDS,
            "track": conversations.tracking(
                self.settings.conversations, conversation, _address(message), item.user_text, now
            ),
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
            names.commit_marker_key(message.message_id),
            names.offered_key(conversation),
            *conversations.Keys(names).tracked(conversation, now, self.settings.conversations.day(now)),
        ]
        return keys, orjson.dumps(payload)

    def _variant(self, item: Commit, reply: ReplyMessage, now: float) -> dict[str, Any]:
        """The effects that depend on which reply stands."""
        content = reply.reply
        memory, offered = self._carried(item, reply)
        variant = {
            "stats": stats.reply_writes(_counts(item, reply)),
            "memory": memory,
            "offered": offered,
            "offered_state": _offered(item, content).to_bytes().decode() if offered == "set" else "",
            "assistant_turn": _turn("assistant", content.text).decode(),
            "log_entry": orjson.dumps(_log_entry(item, reply, now)).decode(),
            # A reply the delivery consumers will send (not the web's, not one held back).
            "outbound": item.message.channel != "web" and not reply.silenced and not item.merged,
        }
        if not item.merged:  # what the reply does to its conversation's outcome and rating
            variant["track"] = conversations.reply_tracking(
                content.kind, handoff=content.handoff, silenced=reply.silenced, csat=content.csat
            )
        return variant

    def _carried(self, item: Commit, reply: ReplyMessage) -> tuple[str, str]:
        """What the standing reply does to the memory and to the options offered: a silenced or
        merged one leaves both alone (a merged message's belong to the reply it was merged into)."""
        if reply.silenced or item.merged:
            return "keep", "keep"
        content = reply.reply
        memory = "reset" if content.reset else "append" if self.settings.memory_turns > 0 else "keep"
        return memory, "set" if content.options else "clear"


def _counts(item: Commit, reply: ReplyMessage) -> stats.ReplyCounts:
    """What the statistics count of a standing reply."""
    timings = item.timings
    usage = item.reply.reply.usage  # the tokens the generated reply cost, whatever stands
    return stats.ReplyCounts(
        channel=item.message.channel,
        end_to_end_ms=timings.end_to_end_ms,
        queue_wait_ms=timings.queue_wait_ms,
        processing_ms=timings.processing_ms,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        silenced=reply.silenced,
        handoff=reply.reply.handoff and not reply.silenced and not item.merged,
        merged=item.merged,
    )


def _address(message: InboundMessage) -> dict[str, Any]:
    """Where a rating's question goes when the conversation ends (the reply's own addressing)."""
    return {
        "channel": message.channel,
        "user_id": message.user_id,
        "gateway_id": message.gateway_id,
        "metadata": message.metadata,
    }


def silenced(reply: ReplyMessage) -> ReplyMessage:
    return replace(reply, reply=SILENT_REPLY, silenced=True)


def _standing(item: Commit, decision: list[Any]) -> ReplyMessage:
    """The reply that stands after `_DECIDE` returned `decision`."""
    match CommitOutcome(decision[0]):
        case CommitOutcome.STORED:
            return ReplyMessage.from_bytes(decision[1])
        case CommitOutcome.SILENCED:
            return silenced(item.reply)
        case CommitOutcome.ESCALATED if item.escalation is not None:
            return item.escalation
        case _:
            return item.reply


def _offered(item: Commit, content: ReplyContent) -> Offered:
    """What a reply with options leaves for the next message to choose from."""
    return Offered(content.options, content.question or item.user_text)


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
    if message.metadata.get("name"):  # the customer's name as the channel gave it (admin inbox)
        entry["name"] = str(message.metadata["name"])
    if item.merged:
        entry["merged_into"] = reply.merged_into
    if reply.silenced:
        entry["silenced"] = True
    if reply.reply.csat:  # the customer's rating, shown beside the conversation (admin)
        entry["csat"] = reply.reply.csat
    entry["reply"] = reply.reply.to_dict()
    return entry
