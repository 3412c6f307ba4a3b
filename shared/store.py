"""Redis: the client and the few operations the services perform on it.

Every operation is one round trip (a pipeline or a Lua script), so the hot path pays a fixed,
small number of them per message: one claim in the gateway, one read and one commit in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import stats
from shared.handoff import DEFAULT_TTL_SECONDS as HANDOFF_TTL_SECONDS
from shared.handoff import HandoffInfo
from shared.messages import InboundMessage, ReplyContent, ReplyMessage
from shared.names import Names
from shared.telemetry import redis_span, traced_redis

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
USERS_KEEP_SECONDS = 25 * 3600
INSTANCES_KEEP_SECONDS = 3600
CONVERSATION_LOG_ENTRIES = 200
CONVERSATION_LOG_TTL_SECONDS = 7 * 24 * 3600
# What the bot says while a human has the conversation: nothing. It stands in for the reply that
# was not sent wherever one is stored, logged or announced, so that text never leaks.
SILENT_REPLY = ReplyContent(text="", engine="silenced", confidence=0.0, handoff=True)

# Commit one generated reply, once: the first writer stores it, counts the message in the stats,
# remembers the turn and appends it to the operators' conversation log; a redelivered or raced
# message finds the stored reply and changes nothing. The worker's reply policy is applied here, in
# the same atomic step, so it can never act on stale state:
#   * a conversation with a human (its handoff key lives) gets no bot reply: the message is logged
#     for the agent and a silenced reply is stored (so a redelivery is recognised), nothing is sent;
#   * a fallback reply one too many in a row is replaced by the escalation reply, which hands the
#     conversation to a human; a reply asking for a human starts the handoff;
#   * `/reset` clears the memory; a message merged into a later one's reply leaves memory alone.
# Returns {0} (send the reply given), {1, stored} (already committed), {2} (silenced) or
# {3} (send the escalation reply instead).
#
# KEYS: 1 reply, 2 fine stats, 3 hour stats, 4 total stats, 5 users, 6 memory, 7 attempts,
#       8 conversation log, 9 conversations, 10 handoff, 11 handoffs index, 12 fallback streak
# ARGV: 1 reply, 2 reply ttl, 3 e2e ms, 4 e2e bucket, 5 wait bucket, 6 processing bucket, 7 channel,
#       8 user member, 9 now, 10 fine ttl, 11 hour ttl, 12 memory length, 13 user turn,
#       14 assistant turn, 15 users keep, 16 memory ttl, 17 log entry without its closing brace,
#       18 log length, 19 log ttl, 20 conversation id, 21 reply as logged, 22 flags, 23 silenced reply,
#       24 escalation reply, 25 escalation as logged, 26 escalation assistant turn, 27 handoff info,
#       28 handoff ttl, 29 fallbacks in a row before a handoff (0: never), 30 prompt tokens,
#       31 completion tokens, 32 silenced reply as logged
# Flags: h starts a handoff, r resets the memory, f is a fallback reply, m merged into another reply,
#        s silenced whatever the handoff key says (it was live when the worker began).
_COMMIT_REPLY = """
local stored = redis.call('GET', KEYS[1])
if stored then
  return {1, stored}
end
local flags = ARGV[22]
local function has(flag) return string.find(flags, flag, 1, true) ~= nil end
local outcome, reply, logged, assistant = 0, ARGV[1], ARGV[21], ARGV[14]
if has('s') or redis.call('EXISTS', KEYS[10]) == 1 then
  outcome, reply, logged = 2, ARGV[23], ARGV[32]
elseif has('f') then
  local streak = redis.call('INCR', KEYS[12])
  redis.call('EXPIRE', KEYS[12], ARGV[16])
  local limit = tonumber(ARGV[29])
  if limit > 0 and streak >= limit then
    outcome, reply, logged, assistant = 3, ARGV[24], ARGV[25], ARGV[26]
    flags = flags .. 'h'
  end
elseif not has('m') then
  redis.call('DEL', KEYS[12])
end
redis.call('SET', KEYS[1], reply, 'EX', ARGV[2])
local ms = tonumber(ARGV[3])
for i = 2, 3 do
  local k = KEYS[i]
  redis.call('HINCRBY', k, 'n', 1)
  redis.call('HINCRBY', k, 'e2e:' .. ARGV[4], 1)
  redis.call('HINCRBY', k, 'wait:' .. ARGV[5], 1)
  redis.call('HINCRBY', k, 'proc:' .. ARGV[6], 1)
  redis.call('HINCRBY', k, 'channel:' .. ARGV[7], 1)
  redis.call('HINCRBYFLOAT', k, 'e2e_sum', ARGV[3])
  if ms > tonumber(redis.call('HGET', k, 'e2e_max') or '0') then
    redis.call('HSET', k, 'e2e_max', ARGV[3])
  end
  if tonumber(ARGV[30]) > 0 or tonumber(ARGV[31]) > 0 then
    redis.call('HINCRBY', k, 'tokens:prompt', ARGV[30])
    redis.call('HINCRBY', k, 'tokens:completion', ARGV[31])
  end
  if outcome == 2 then
    redis.call('HINCRBY', k, 'outcome:silenced', 1)
  elseif has('h') then
    redis.call('HINCRBY', k, 'outcome:handoff', 1)
  end
  if has('m') then
    redis.call('HINCRBY', k, 'outcome:merged', 1)
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('EXPIRE', KEYS[3], ARGV[11])
redis.call('HINCRBY', KEYS[4], 'n', 1)
redis.call('ZADD', KEYS[5], ARGV[9], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(ARGV[9]) - tonumber(ARGV[15]))
if outcome ~= 2 then
  if has('h') then
    -- The same writes as shared.handoff.Handoffs.start, which the admin area reads.
    redis.call('SET', KEYS[10], ARGV[27], 'EX', ARGV[28])
    redis.call('ZADD', KEYS[11], ARGV[9], ARGV[20])
    redis.call('DEL', KEYS[12])
  end
  local keep = tonumber(ARGV[12])
  if has('r') then
    redis.call('DEL', KEYS[6])
  elseif keep > 0 and not has('m') then
    redis.call('RPUSH', KEYS[6], ARGV[13], assistant)
    redis.call('LTRIM', KEYS[6], -keep, -1)
    redis.call('EXPIRE', KEYS[6], ARGV[16])
  end
end
redis.call('DEL', KEYS[7])
local marker = outcome == 2 and ',"silenced":true' or ''
redis.call('RPUSH', KEYS[8], ARGV[17] .. marker .. ',"reply":' .. logged .. '}')
redis.call('LTRIM', KEYS[8], -tonumber(ARGV[18]), -1)
redis.call('EXPIRE', KEYS[8], ARGV[19])
redis.call('ZADD', KEYS[9], ARGV[9], ARGV[20])
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', tonumber(ARGV[9]) - tonumber(ARGV[19]))
return {outcome}
"""

MAX_REDIS_CONNECTIONS = 1024
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def create_redis(url: str) -> Redis:
    # A short retry rides over a dropped connection; longer outages surface as errors that the
    # callers turn into 503s (gateway) or an in-place wait (worker).
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        # redis-py's default pool (100) raises "Too many connections" beyond that many commands
        # in flight: a burst of concurrent requests must not turn into errors.
        max_connections=MAX_REDIS_CONNECTIONS,
    )


@dataclass(frozen=True, slots=True)
class Timings:
    queue_wait_ms: float
    processing_ms: float
    end_to_end_ms: float


@dataclass(frozen=True, slots=True)
class WorkState:
    """What the worker needs to know before it generates a reply."""

    stored_reply: ReplyMessage | None
    attempt: int  # 1 + the failures recorded so far
    history: list[dict[str, str]]
    # The conversation is with a human (only read along with the memory: for an engine that costs).
    handed_off: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """A generated reply for `Store.commit`, with what the reply policy needs to decide at commit."""

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

    def flags(self) -> str:
        if self.reply.merged_into:
            # The reply's effects (handoff, reset, memory, fallback count) belong to the message
            # it was merged into.
            return "ms" if self.silenced else "m"
        content = self.reply.reply
        return "".join(
            flag
            for flag, on in (
                ("h", content.handoff),
                ("r", content.reset),
                ("f", self.escalation is not None),
                ("s", self.silenced),
            )
            if on
        )


@dataclass(slots=True)
class Store:
    redis: Redis
    names: Names
    memory_turns: int = 10
    memory_ttl_s: int = 86_400
    handoff_ttl_s: int = HANDOFF_TTL_SECONDS
    handoff_after_fallbacks: int = 3
    _commit_reply: AsyncScript = field(init=False)

    def __post_init__(self) -> None:
        # Registered scripts run by EVALSHA: the script text crosses the wire once, not per message.
        self._commit_reply = self.redis.register_script(_COMMIT_REPLY)

    # Gateway -------------------------------------------------------------------------------
    @traced_redis("claim")
    async def claim(self, message_id: str, conversation_id: str) -> str | None:
        """Claim a message id atomically. None when we won; else the conversation it was claimed for."""
        # SET NX GET (Redis 7): one command both claims and, when it loses, says who won.
        owner = await self.redis.set(
            self.names.claim_key(message_id), conversation_id, nx=True, get=True, ex=IDEMPOTENCY_TTL_SECONDS
        )
        return cast(str | None, owner)

    @traced_redis("release")
    async def release(self, message_id: str) -> None:
        """Give a claim back when the message could not be queued, so a retry is not a 'duplicate'."""
        await self.redis.delete(self.names.claim_key(message_id))

    @traced_redis("stored_reply")
    async def stored_reply(self, message_id: str, *, silenced: bool = False) -> ReplyMessage | None:
        """The reply the message got; None while it has none. When the bot stayed silent because
        the conversation was with a human (the agent answers it), None too, unless `silenced`:
        then a reply marked `silenced`, for callers that tell the customer so at once."""
        raw = await self.redis.get(self.names.reply_key(message_id))
        reply = ReplyMessage.from_bytes(raw) if raw else None
        return None if reply is None or (reply.silenced and not silenced) else reply

    # Worker --------------------------------------------------------------------------------
    async def begin(self, message: InboundMessage, *, redelivered: bool, with_history: bool) -> WorkState:
        """Read what the worker must know first. A first delivery cannot have a stored reply or
        earlier failures, so the common case reads only the memory, and only for engines using it
        (they also learn whether the conversation is with a human, and skip generating then)."""
        if not redelivered and not with_history:
            return WorkState(stored_reply=None, attempt=1, history=[])
        async with self.redis.pipeline(transaction=False) as pipe:
            if redelivered:
                pipe.get(self.names.reply_key(message.message_id))
                pipe.get(self.names.attempts_key(message.message_id))
            if with_history:
                pipe.lrange(self.names.memory_key(message.conversation_id), -2 * self.memory_turns, -1)
                pipe.exists(self.names.handoff_key(message.conversation_id))
            with redis_span("begin"):
                results = await pipe.execute()
        stored, attempt = (results[0], int(results[1] or 0) + 1) if redelivered else (None, 1)
        memory, handed_off = (results[-2], bool(results[-1])) if with_history else ([], False)
        return WorkState(
            stored_reply=ReplyMessage.from_bytes(stored) if stored else None,
            attempt=attempt,
            history=[orjson.loads(item) for item in memory],
            handed_off=handed_off,
        )

    @traced_redis("record_failure")
    async def record_failure(self, message_id: str) -> int:
        """Count a failed attempt at a message; returns how many there have been."""
        key = self.names.attempts_key(message_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, IDEMPOTENCY_TTL_SECONDS)
            failures, _ = await pipe.execute()
        return int(failures)

    @traced_redis("commit")
    async def commit(self, items: Sequence[Commit]) -> list[ReplyMessage]:
        """Store each reply, count it and remember the turn, once, in one round trip, applying the
        reply policy (see _COMMIT_REPLY). Returns the replies that stand: the one given, the
        escalation sent instead, a copy marked `silenced` (not to be sent), or the reply another
        delivery of the same message committed first."""
        if not items:
            return []
        now = time.time()
        calls = [self._commit_arguments(item, now) for item in items]
        try:
            results = await self._commit_pipeline(calls)
        except NoScriptError:
            # Redis restarted or flushed its scripts. Committing again is safe: a reply already
            # stored wins over ours (SET NX), so nothing is counted twice.
            await self.redis.script_load(_COMMIT_REPLY)
            results = await self._commit_pipeline(calls)
        return [_standing(item, result) for item, result in zip(items, results, strict=True)]

    async def _commit_pipeline(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        # Plain EVALSHA: redis-py's pipelined Script objects would first ask SCRIPT EXISTS,
        # a second round trip for every batch.
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._commit_reply.sha, len(keys), *keys, *args)
            return await pipe.execute()

    def _commit_arguments(self, item: Commit, now: float) -> tuple[list[str], list[Any]]:
        names = self.names
        message, reply, timings = item.message, item.reply, item.timings
        conversation = message.conversation_id
        keys = [
            names.reply_key(message.message_id),
            names.stats_fine_key(stats.slice_start(now, stats.FINE_SECONDS)),
            names.stats_hour_key(stats.slice_start(now, stats.HOUR_SECONDS)),
            names.stats_total_key,
            names.users_key,
            names.memory_key(conversation),
            names.attempts_key(message.message_id),
            names.conversation_log_key(conversation),
            names.conversations_key,
            names.handoff_key(conversation),
            names.handoffs_key,
            names.fallback_streak_key(conversation),
        ]
        escalation = item.escalation
        usage = reply.reply.usage
        handoff = HandoffInfo(
            channel=message.channel,
            user_id=message.user_id,
            gateway_id=message.gateway_id,
            metadata=message.metadata,
            reason=item.user_text,
            started_at=now,
        )
        args: list[Any] = [
            reply.to_bytes(),
            IDEMPOTENCY_TTL_SECONDS,
            repr(timings.end_to_end_ms),
            stats.bucket_of(timings.end_to_end_ms),
            stats.bucket_of(timings.queue_wait_ms),
            stats.bucket_of(timings.processing_ms),
            message.channel,
            f"{message.channel}:{message.user_id}",
            repr(now),
            stats.FINE_TTL_SECONDS,
            stats.HOUR_TTL_SECONDS,
            2 * self.memory_turns,
            _turn("user", item.user_text),
            _turn("assistant", reply.reply.text),
            USERS_KEEP_SECONDS,
            self.memory_ttl_s,
            _log_head(item, now),
            CONVERSATION_LOG_ENTRIES,
            CONVERSATION_LOG_TTL_SECONDS,
            conversation,
            orjson.dumps(reply.reply.to_dict()),
            item.flags(),
            _silenced(reply).to_bytes(),
            escalation.to_bytes() if escalation else b"",
            orjson.dumps(escalation.reply.to_dict()) if escalation else b"",
            _turn("assistant", escalation.reply.text) if escalation else b"",
            handoff.to_bytes(),
            self.handoff_ttl_s,
            self.handoff_after_fallbacks,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            orjson.dumps(SILENT_REPLY.to_dict()),
        ]
        return keys, args

    @traced_redis("record_error")
    async def record_error(self, kind: str) -> None:
        now = time.time()
        fine = self.names.stats_fine_key(stats.slice_start(now, stats.FINE_SECONDS))
        hour = self.names.stats_hour_key(stats.slice_start(now, stats.HOUR_SECONDS))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, ttl in ((fine, stats.FINE_TTL_SECONDS), (hour, stats.HOUR_TTL_SECONDS)):
                pipe.hincrby(key, stats.ERRORS, 1)
                pipe.hincrby(key, f"errkind:{kind}", 1)
                pipe.expire(key, ttl)
            pipe.hincrby(self.names.stats_total_key, stats.ERRORS, 1)
            await pipe.execute()

    @traced_redis("log_conversation")
    async def log_conversation(self, conversation_id: str, entry: dict[str, Any]) -> None:
        """Append an entry that is not the bot's (an agent's reply) to the operators' conversation log."""
        now = time.time()
        log_key = self.names.conversation_log_key(conversation_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(log_key, orjson.dumps(entry))
            pipe.ltrim(log_key, -CONVERSATION_LOG_ENTRIES, -1)
            pipe.expire(log_key, CONVERSATION_LOG_TTL_SECONDS)
            pipe.zadd(self.names.conversations_key, {conversation_id: now})
            await pipe.execute()

    # Heartbeats ----------------------------------------------------------------------------
    async def beat(self, service: str, instance_id: str, state: dict[str, Any], ttl_s: float) -> None:
        now = time.time()
        member = f"{service}:{instance_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.names.heartbeat_key(service, instance_id), orjson.dumps(state), px=int(ttl_s * 1000))
            pipe.zadd(self.names.instances_key, {member: now})
            pipe.zremrangebyscore(self.names.instances_key, "-inf", now - INSTANCES_KEEP_SECONDS)
            await pipe.execute()

    async def forget(self, service: str, instance_id: str) -> None:
        """Leave at once on a clean stop, so the others need not wait for the heartbeat to expire."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.names.heartbeat_key(service, instance_id))
            pipe.zrem(self.names.instances_key, f"{service}:{instance_id}")
            await pipe.execute()

    async def live_instances(self, ttl_s: float) -> list[dict[str, Any]]:
        members = await self.redis.zrangebyscore(self.names.instances_key, time.time() - ttl_s, "+inf")
        if not members:
            return []
        keys = [self.names.heartbeat_key(*str(member).split(":", 1)) for member in members]
        states = await self.redis.mget(keys)
        return [orjson.loads(state) for state in states if state]


def _turn(role: str, text: str) -> bytes:
    return orjson.dumps({"role": role, "text": text})


def _log_head(item: Commit, now: float) -> bytes:
    """The conversation-log entry without its closing brace: the script appends the reply that
    stands (only it knows which)."""
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
    if item.reply.merged_into:
        entry["merged_into"] = item.reply.merged_into
    return orjson.dumps(entry)[:-1]


def _silenced(reply: ReplyMessage) -> ReplyMessage:
    return replace(reply, reply=SILENT_REPLY, silenced=True)


def _standing(item: Commit, result: list[Any]) -> ReplyMessage:
    """The reply that stands after the commit script answered `result` for `item`."""
    outcome = int(result[0])
    if outcome == 1:
        return ReplyMessage.from_bytes(result[1])
    if outcome == 2:
        return _silenced(item.reply)
    if outcome == 3 and item.escalation is not None:
        return item.escalation
    return item.reply


class BackgroundErrors:
    """Counts errors from a request path without making the answer wait on Redis (which may be
    the very thing that failed): each count is a background task, and they never pile up."""

    MAX_PENDING = 100

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, kind: str) -> None:
        if len(self._pending) >= self.MAX_PENDING:
            return
        task = asyncio.create_task(self._record(kind))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, kind: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._store.record_error(kind)


async def redis_check(redis: Redis) -> dict[str, Any]:
    """A health check entry: up with the ping's latency, or down with the reason."""
    started = time.perf_counter()
    try:
        await redis.ping()
    except REDIS_ERRORS as exc:
        return {"status": "down", "error": str(exc) or type(exc).__name__}
    return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
