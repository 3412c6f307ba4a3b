"""Committing a generated reply, once: the worker's only write path for a message it answered.

One Lua script per message (`_COMMIT`), the calls of every lane that is waiting sent together in
one pipeline (what arrives while a batch is on the wire goes in the next one); Redis runs each
script whole, so a worker dying after sending leaves nothing half done. It first decides what must
be decided atomically: a reply already stored (a redelivery, or a race: the first writer wins and
the others get its reply), a conversation with a human (the reply is stored silenced, never sent),
the fallback streak that escalates to a human (what a reply does to it is `Commit.streak`), and
starting that handoff, listed for the admin area in the same step (`shared.handoff`), so no crash
leaves a handoff running unlisted. It stores the reply that stands and then applies what that
reply adds: the memory, the options the reply offers (the only ones a next message may choose: a
reply without options clears them), the operators' conversation log, the reply's place in the
outbound order, and what the reply does to its conversation's outcome and rating (shared/
conversations.py: counted when the conversation ends). Its input is one JSON payload with named
fields, plus the keys it touches.

The statistics of a reply that stands (counts, latency histograms, users seen) are recorded in
the worker's `shared.recorder.Recorder` once the script says it stood, and reach Redis with the
recorder's next flush, about a second later: no statistics command runs per message.

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
from services.worker.push import push_all
from services.worker.state import OFFERED_TTL_SECONDS, Offered
from shared import conversations, handoff, stats
from shared.handoff import HandoffInfo
from shared.messages import InboundMessage, ReplyContent, ReplyMessage
from shared.names import Names
from shared.recorder import Recorder
from shared.store import CONVERSATION_LOG_ENTRIES, CONVERSATION_LOG_TTL_SECONDS, IDEMPOTENCY_TTL_SECONDS
from shared.telemetry import redis_span

log = logging.getLogger(__name__)

# How long a user seen stays listed: the monitor counts the users of the last day, and an hour's margin.
USERS_KEEP_SECONDS = 25 * 3600
# What the bot says while a human has the conversation: nothing. It stands in for the reply that
# was not sent wherever one is stored, logged or announced, so that text never leaks.
SILENT_REPLY = ReplyContent(text="", engine="silenced", confidence=0.0, handoff=True, kind="handoff")


class CommitOutcome(StrEnum):
    """What `_COMMIT` decided, by name."""

    SENT = "sent"  # the reply given stands
    STORED = "stored"  # a reply was stored before (a redelivery, or another delivery won): it stands
    SILENCED = "silenced"  # a human has the conversation: the reply is stored silenced, never sent
    ESCALATED = "escalated"  # one fallback too many in a row: the escalation stands, a handoff starts


# What `_COMMIT` answers a call without the silenced variant for a conversation with a human.
HELD = "held"


# What a reply does to its conversation's fallback streak (`Commit.streak`).
StreakStep = Literal["count", "keep", "end"]

# KEYS: 1 the reply, 2 the conversation's handoff, 3 its fallback streak, 4 the handoffs listed for
#       the admin area (shared.handoff; the same writes as `queue_index`), 5 the memory, 6 the
#       conversation log, 7 the conversations index, 8 the outbound order (a channel reply's place in
#       its conversation's queue of replies to send: services/gateway/delivery/order.py), 9 the
#       options offered (services/worker/state.py `Offered`), 10-16 the conversation's outcome, quiet
#       timer and rating (shared/conversations.py `Keys.tracked`, `TRACK_LUA`).
# Returns {'stored', the stored reply}, or {outcome} for the other outcomes (CommitOutcome), or
# {'held'} (`HELD`), having written nothing, when the conversation is with a human and the call
# carries no silenced variant: most calls leave it out (it is a second copy of the reply to
# encode, and for Redis to decode, that only a handoff begun since the worker's read needs), and
# the worker calls again with it. A web
# reply that stands is published last on its channels (the variant's `push`): the gateways hear it
# from the same call that stores it (services/worker/push.py).
# The decision first, then the effects of the variant (`_effects`, one per possible outcome) of the
# reply that stands. What it reads comes in one MGET (the stored reply, the handoff, the fallback
# streak, the options offered), so a key to clear is deleted only when it is there: by one DEL at
# the end, which most messages (an answer after an answer) do not need. The conversation log is
# trimmed only once it holds twice its length (its readers read its newest entries): one LTRIM in
# many RPUSHes. A log's first entry lists its conversation in the index, in the same step, so no log
# is ever unlisted (the admin area, retention and privacy requests find conversations there); the
# conversation's later activity moves it up with the recorder's next flush (`_count`), about a
# second later, as one ZADD for all the conversations of that second. The memory is kept to its
# exact bound (MEMORY_TURNS), trimmed only once it is over. The memory and the log get their time to
# live when they are made, here (none is ever left without one), and have it renewed by the
# recorder's flush after each message (`_count`): once a second for all the messages of that second,
# not once per message. A worker killed within that second leaves the previous renewal standing, so
# those keys may expire up to the time since it early. The failed attempts' count is left to
# expire: a message with a stored reply never reads it.
# The `#!lua` line makes Redis refuse the whole script up front when it is over `maxmemory`:
# without it, Redis checks memory only at a script's first write, which may be a DEL it allows.
_COMMIT = (
    "#!lua\n"
    + conversations.TRACK_LUA
    + """
local found = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[9])
local stored, held, streak, offered = found[1], found[2], found[3], found[4]
if stored then
  return {'stored', stored}
end
local p = cjson.decode(ARGV[1])
local clear = {}
local outcome, reply = 'sent', p.reply
-- A person has the conversation, or will at the next opening (outside business hours): the
-- bot is silent either way, and the customer's words wait for them in the conversation's log.
if p.silenced or held then
  if not p.silenced_reply then
    return {'held'}
  end
  outcome, reply = 'silenced', p.silenced_reply
elseif p.streak == 'count' then
  streak = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], p.streak_ttl)
  if p.fallbacks_before_handoff > 0 and streak >= p.fallbacks_before_handoff then
    outcome, reply = 'escalated', p.escalation
  end
elseif p.streak == 'end' and streak then
  clear[#clear + 1] = KEYS[3]
  streak = false
end
redis.call('SET', KEYS[1], reply, 'EX', p.reply_ttl)
if outcome == 'escalated' or (outcome == 'sent' and p.handoff) then
  redis.call('SET', KEYS[2], p.handoff_info, 'EX', p.handoff_ttl)
  if streak then
    clear[#clear + 1] = KEYS[3]
  end
  redis.call('ZADD', KEYS[4], p.handoff_counted_from, p.conversation)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', p.handoff_expired_before)
end
local v = p.variants[outcome]
if v.memory == 'reset' then
  clear[#clear + 1] = KEYS[5]
elseif v.memory == 'append' then
  local remembered = redis.call('RPUSH', KEYS[5], p.user_turn, v.assistant_turn)
  if remembered > p.memory_length then
    redis.call('LTRIM', KEYS[5], -p.memory_length, -1)
  elseif remembered == 2 then
    redis.call('EXPIRE', KEYS[5], p.memory_ttl)
  end
end
if v.offered == 'set' then
  redis.call('SET', KEYS[9], v.offered_state, 'EX', p.offered_ttl)
elseif v.offered == 'clear' and offered then
  clear[#clear + 1] = KEYS[9]
end
local logged = redis.call('RPUSH', KEYS[6], v.log_entry)
if logged > 2 * p.log_length then
  redis.call('LTRIM', KEYS[6], -p.log_length, -1)
elseif logged == 1 then
  redis.call('ZADD', KEYS[7], p.now, p.conversation)
  redis.call('EXPIRE', KEYS[6], p.log_ttl)
end
if v.outbound then
  redis.call('RPUSH', KEYS[8], p.message_id)
  redis.call('EXPIRE', KEYS[8], p.outbound_ttl)
end
if v.track then
  track({KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16]}, p.track, v.track)
end
if #clear > 0 then
  redis.call('DEL', unpack(clear))
end
for _, channel in ipairs(v.push) do
  redis.call('PUBLISH', channel, reply)
end
return {outcome}
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
    # Where the statistics of the replies that stand are counted, and the time to live of their
    # memory and log renewed (None: neither, a test's).
    recorder: Recorder | None = None
    # Epoch seconds now (a test's clock decides, e.g., whether people are back from an away handoff).
    clock: Callable[[], float] = time.time
    _batches: Coalescer[Commit, ReplyMessage] = field(init=False)
    _sha: str = ""

    def __post_init__(self) -> None:
        self._sha = self.redis.register_script(_COMMIT).sha
        self._batches = Coalescer(self._commit_batch, name="commit")

    async def commit(self, item: Commit) -> ReplyMessage:
        """Store the reply once; returns the reply that stands: the one given, the escalation sent
        instead, a copy marked `silenced` (not to be sent), or the reply another delivery of the
        same message committed first. Raises REDIS_ERRORS (nothing decided then)."""
        return await self._batches.submit(item)

    async def commit_all(self, items: Sequence[Commit]) -> list[ReplyMessage]:
        """Several commits in order (a burst, or a test's batch), in one round trip."""
        if len(items) == 1:  # the common unit: awaited in place, no task (nor loop turn) for gather's sake
            return [await self.commit(items[0])]
        return list(await asyncio.gather(*(self.commit(item) for item in items)))

    async def _commit_batch(self, items: list[Commit]) -> list[ReplyMessage]:
        with redis_span("commit", **{"atendimento.commit.batch": len(items)}):
            return await self._commit(items)

    async def _commit(self, items: list[Commit]) -> list[ReplyMessage]:
        """One script call per message, all in one pipeline; then the statistics of those that stood."""
        now = self.clock()
        calls = [self._call(item, now, with_silenced=item.silenced) for item in items]
        results = await self._run_loaded(calls)
        held = [i for i, result in enumerate(results) if result[0] == HELD]
        if held:  # a human took the conversation since the worker's read: called again, able to silence
            again = [self._call(items[i], now, with_silenced=True) for i in held]
            for i, call, result in zip(held, again, await self._run_loaded(again), strict=True):
                calls[i], results[i] = call, result
        decided = [
            _standing(item, decision, candidates)
            for item, (_, _, candidates), decision in zip(items, calls, results, strict=True)
        ]
        # The script handed back the web replies it stored; one stored before stands instead of
        # a generated one, and is handed back here. Before any counting: if this raises, the
        # batch is committed again, and a script finding its own reply stored counts it then.
        stored = [reply for outcome, reply in decided if outcome is CommitOutcome.STORED and reply.channel == "web"]
        if stored:
            await push_all(self.redis, self.names, stored)
        for item, (outcome, reply) in zip(items, decided, strict=True):
            if outcome is not CommitOutcome.STORED:
                self._count(item, reply)
        return [reply for _, reply in decided]

    async def _run_loaded(self, calls: list[tuple[list[str], bytes, _Candidates]]) -> list[Any]:
        try:
            return await self._run(calls)
        except NoScriptError:
            # Redis restarted or flushed its scripts. Running again is safe: a stored reply wins.
            await self.redis.script_load(_COMMIT)
            return await self._run(calls)

    async def _run(self, calls: list[tuple[list[str], bytes, _Candidates]]) -> list[Any]:
        # Plain EVALSHA: redis-py's pipelined Script objects would first ask SCRIPT EXISTS.
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, payload, _ in calls:
                pipe.evalsha(self._sha, len(keys), *keys, payload)
            return await pipe.execute()

    def _count(self, item: Commit, reply: ReplyMessage) -> None:
        if self.recorder is None:
            return
        message = item.message
        self.recorder.reply(_counts(item, reply))
        self.recorder.seen(self.names.users_key, f"{message.channel}:{message.user_id}", USERS_KEEP_SECONDS)
        # The conversation's last activity in the index, which keeps the conversations of the log's
        # lifetime (trimmed once per flush, not per message), and the time to live of its log and
        # memory, renewed once per flush (the script sets it when it makes them).
        conversation = message.conversation_id
        self.recorder.seen(self.names.conversations_key, conversation, CONVERSATION_LOG_TTL_SECONDS)
        self.recorder.expire(self.names.conversation_log_key(conversation), CONVERSATION_LOG_TTL_SECONDS)
        if self._carried(item, reply)[0] == "append":
            self.recorder.expire(self.names.memory_key(conversation), self.settings.memory_ttl_s)

    def _call(self, item: Commit, now: float, *, with_silenced: bool) -> tuple[list[str], bytes, _Candidates]:
        """The keys and payload of one message's script call, and the replies it may store
        (`with_silenced`: the reply silenced among them, see `HELD`)."""
        message, reply, escalation = item.message, item.reply, item.escalation
        conversation = message.conversation_id
        silent = silenced(reply) if with_silenced else None  # made once: it is stored and logged alike
        candidates = _Candidates(
            reply=reply.to_bytes().decode(),
            silenced=silent.to_bytes().decode() if silent else "",
            escalation=escalation.to_bytes().decode() if escalation else "",
        )
        keys = [
            self.names.reply_key(message.message_id),
            self.names.handoff_key(conversation),
            self.names.fallback_streak_key(conversation),
            self.names.handoffs_key,
            self.names.memory_key(conversation),
            self.names.conversation_log_key(conversation),
            self.names.conversations_key,
            self.names.outbound_order_key(conversation),
            self.names.offered_key(conversation),
            *conversations.Keys(self.names).tracked(conversation, now, self.settings.conversations.day(now)),
        ]
        payload = self._decision(item, candidates, now) | self._effects(item, silent, now)
        return keys, orjson.dumps(payload), candidates

    def _decision(self, item: Commit, candidates: _Candidates, now: float) -> dict[str, Any]:
        """What the script's decision reads; the silenced reply only when carried (see `HELD`),
        the handoff's fields only for a reply that may start one."""
        message, escalation = item.message, item.escalation
        handoff = item.reply.reply.handoff and not item.merged
        decision: dict[str, Any] = {
            "reply": candidates.reply,
            "escalation": candidates.escalation,
            "reply_ttl": IDEMPOTENCY_TTL_SECONDS,
            "silenced": item.silenced,
            "handoff": handoff,
            "streak": item.streak,
            "fallbacks_before_handoff": self.settings.handoff_after_fallbacks,
            "streak_ttl": self.settings.memory_ttl_s,
            "conversation": message.conversation_id,
            "now": now,
        }
        if candidates.silenced:
            decision["silenced_reply"] = candidates.silenced
        if not (handoff or escalation):
            return decision
        info = HandoffInfo(
            channel=message.channel,
            user_id=message.user_id,
            gateway_id=message.gateway_id,
            metadata=message.metadata,
            reason=item.user_text,
            started_at=now,
            away_until=max(item.reply.reply.away_until, escalation.reply.away_until if escalation else 0.0),
        )
        return decision | {
            "handoff_info": info.to_bytes().decode(),
            "handoff_ttl": info.lifetime(self.settings.handoff_ttl_s, now),
            "handoff_counted_from": info.counted_from(now),
            "handoff_expired_before": now - self.settings.handoff_ttl_s,
        }

    def _effects(self, item: Commit, silent: ReplyMessage | None, now: float) -> dict[str, Any]:
        """What the script's effects read: one variant per reply that may stand (`silent`: the
        reply silenced, when carried), and the rest."""
        variants = {CommitOutcome.SENT.value: self._variant(item, item.reply, now)}
        if silent is not None:
            variants[CommitOutcome.SILENCED.value] = self._variant(item, silent, now)
        if item.escalation is not None:
            variants[CommitOutcome.ESCALATED.value] = self._variant(item, item.escalation, now)
        return {
            "variants": variants,
            "user_turn": _turn("user", item.user_text).decode(),
            "memory_length": 2 * self.settings.memory_turns,
            "memory_ttl": self.settings.memory_ttl_s,
            "offered_ttl": OFFERED_TTL_SECONDS,
            "log_length": CONVERSATION_LOG_ENTRIES,
            "log_ttl": CONVERSATION_LOG_TTL_SECONDS,
            "message_id": item.message.message_id,
            "outbound_ttl": IDEMPOTENCY_TTL_SECONDS,
            "track": conversations.tracking(
                self.settings.conversations,
                item.message.conversation_id,
                _address(item.message),
                item.user_text,
                now,
                option=item.message.option,
            ),
        }

    def _variant(self, item: Commit, reply: ReplyMessage, now: float) -> dict[str, Any]:
        """The effects that depend on which reply stands."""
        content = reply.reply
        memory, offered = self._carried(item, reply)
        variant = {
            "memory": memory,
            "offered": offered,
            "offered_state": _offered(item, content).to_bytes().decode() if offered == "set" else "",
            "assistant_turn": _turn("assistant", content.text).decode(),
            "log_entry": orjson.dumps(_log_entry(item, reply, now)).decode(),
            # A reply the delivery consumers will send (not the web's, not one held back).
            "outbound": item.message.channel != "web" and not reply.silenced and not item.merged,
            # Where a web reply is handed back to the gateways, in the same call (services/worker/push.py).
            "push": list(self.names.push_channels(reply)) if item.message.channel == "web" else [],
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


@dataclass(frozen=True, slots=True)
class _Candidates:
    """The replies a commit may store, as the script stores them ("": not this call's to store)."""

    reply: str
    silenced: str
    escalation: str


def _standing(item: Commit, decision: list[Any], candidates: _Candidates) -> tuple[CommitOutcome, ReplyMessage]:
    """What `_COMMIT` decided and the reply that stands. A stored reply that is one this commit
    would store is this commit's own, from a call whose answer was lost (a dropped connection and
    the retry): it stood with this commit, which then counts it."""
    outcome = CommitOutcome(decision[0])
    if outcome is CommitOutcome.STORED:
        stored = decision[1]
        # The silenced form made here when the call did not carry it: a stored reply is rare.
        silent = candidates.silenced or silenced(item.reply).to_bytes().decode()
        mine = {candidates.reply: CommitOutcome.SENT, silent: CommitOutcome.SILENCED}
        if candidates.escalation:
            mine[candidates.escalation] = CommitOutcome.ESCALATED
        outcome = mine.get(stored, CommitOutcome.STORED)
        if outcome is CommitOutcome.STORED:
            return outcome, ReplyMessage.from_bytes(stored)
    match outcome:
        case CommitOutcome.SILENCED:
            return outcome, silenced(item.reply)
        case CommitOutcome.ESCALATED if item.escalation is not None:
            return outcome, item.escalation
        case _:
            return outcome, item.reply


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
