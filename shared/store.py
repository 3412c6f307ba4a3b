"""Redis: the client and the few operations the services perform on it.

Every operation is one round trip (a pipeline or a Lua script), so the hot path pays a fixed,
small number of them per message: one script call (rate limits and claim, in
services/gateway/admission.py) and an accept in the gateway, at most one read in the worker (the
worker's commit is its own: services/worker/commit.py). The gateway's script calls and accepts go
through one `AutoPipeline`: those of all the requests in flight share each round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis._parsers import _AsyncRESP3Parser
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import stats
from shared.messages import InboundMessage, Option, ReplyMessage
from shared.names import Names
from shared.pipelining import AutoPipeline
from shared.telemetry import redis_span, traced_redis

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
USERS_KEEP_SECONDS = 25 * 3600
INSTANCES_KEEP_SECONDS = 3600
CONVERSATION_LOG_ENTRIES = 200
CONVERSATION_LOG_TTL_SECONDS = 7 * 24 * 3600
# How long the options a reply offered may still be chosen: time enough to read and tap, not so
# long that a tap on an old message is taken for an answer to a question long left behind.
OFFERED_TTL_SECONDS = 30 * 60

# A message's claim: provisional while its publish waits for the broker's confirm, accepted after.
#   p:<token>:<since ms>:<conversation>   (token: the claiming request's, so a resent command
#                                          recognises its own write)
#   a:<conversation>
# A Lua function, run by the gateway's admission script with the message's rate limits
# (services/gateway/admission.py). key: the claim. token: the claiming request's. conversation.
# stale_ms: ms after which an unconfirmed claim is stale. ttl: the claim's. t: Redis's TIME.
# Returns {0} won, {1, conversation} accepted before, {2, ms} another request's claim is still
# being published (ask again within ms), {3} won over a stale claim: the message may be queued
# already (its gateway died after the confirm), so this copy is marked as one.
CLAIM_FUNCTION = """
local function claim(key, token, conversation, stale_ms, ttl, t)
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local mine = 'p:' .. token .. ':' .. now .. ':' .. conversation
  local current = redis.call('GET', key)
  if not current then
    redis.call('SET', key, mine, 'EX', ttl)
    return {0}
  end
  if string.sub(current, 1, 2) ~= 'p:' then
    return {1, string.sub(current, 1, 2) == 'a:' and string.sub(current, 3) or current}
  end
  local token_end = string.find(current, ':', 3, true)
  if string.sub(current, 3, token_end - 1) == token then
    return {0}
  end
  local since_end = string.find(current, ':', token_end + 1, true)
  local age = now - tonumber(string.sub(current, token_end + 1, since_end - 1))
  if age < stale_ms then
    return {2, stale_ms - age}
  end
  redis.call('SET', key, mine, 'EX', ttl)
  return {3}
end
"""

# KEYS: 1 claim. ARGV: 1 token. Gives a provisional claim back, only if it is still this request's.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 3 + #ARGV[1]) == 'p:' .. ARGV[1] .. ':' then
  redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: 1 attempts, 2 the last failure counted. ARGV: 1 token, 2 ttl. Counts one failure once: a
# command resent after its reply was lost finds its token and does not count it again.
_RECORD_FAILURE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end
local failures = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', 300)
return failures
"""


class RedisRefused(ResponseError):
    """Redis answered but will not do the work now: snapshots failing (MISCONF), too few replicas,
    a primary down, a script hogging it (BUSY). Like OOM and READONLY, this is "Redis unavailable"."""


class _Parser(_AsyncRESP3Parser):  # RESP3: redis-py's default protocol
    # Refusals get their own exception class, so every `except REDIS_ERRORS` treats them as an
    # outage, while a real error in a command or a script stays a ResponseError (a bug).
    EXCEPTION_CLASSES = {  # noqa: RUF012 (the base class declares it so)
        **_AsyncRESP3Parser.EXCEPTION_CLASSES,
        **dict.fromkeys(("MISCONF", "NOREPLICAS", "MASTERDOWN", "BUSY", "CLUSTERDOWN"), RedisRefused),
    }


# Redis cannot be reached or refuses writes: wait and retry (worker), 503 (edge); never a bug.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, OutOfMemoryError, ReadOnlyError, RedisRefused)

REDIS_POOL_SIZE = 100
REDIS_POOL_WAIT_S = 5.0
# A claim not confirmed within this many ms is taken over by a retry (its gateway died mid-publish).
PROVISIONAL_CLAIM_MS = 10_000


def create_redis(url: str) -> Redis:
    # A short retry rides over a dropped connection; longer outages surface as errors that the
    # callers turn into 503s (gateway) or an in-place wait (worker). The pool blocks: a burst of
    # requests waits for a free connection instead of failing.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_S,
        parser_class=_Parser,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)


@dataclass(frozen=True, slots=True)
class Claim:
    """What claiming a message id found. `won`: publish it (`copy`: it may be queued already);
    else `duplicate_of` (its conversation) when it was accepted before, or `retry_in_s` while
    another request's claim of it is still being published."""

    token: str
    won: bool
    copy: bool = False
    duplicate_of: str | None = None
    retry_in_s: float = 0.0

    @classmethod
    def from_reply(cls, token: str, reply: list[Any]) -> Claim:
        """The claim that `claim` (CLAIM_FUNCTION) answered."""
        outcome = int(reply[0])
        if outcome == 1:
            return cls(token, won=False, duplicate_of=str(reply[1]))
        if outcome == 2:
            return cls(token, won=False, retry_in_s=int(reply[1]) / 1000)
        return cls(token, won=True, copy=outcome == 3)


def claimed_conversation(value: str) -> str:
    """The conversation a claim key's value names (provisional or accepted)."""
    if value.startswith("a:"):
        return value[2:]
    if value.startswith("p:"):
        return value.split(":", 3)[3]
    return value  # written before claims were provisional


@dataclass(frozen=True, slots=True)
class Offered:
    """The options the conversation's last reply offered (written by the worker's commit, for
    OFFERED_TTL_SECONDS), and the customer's question that led to them: what an entry chosen
    from them answers."""

    options: tuple[Option, ...] = ()
    question: str = ""

    def to_bytes(self) -> bytes:
        return orjson.dumps({"options": [option.to_dict() for option in self.options], "question": self.question})

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Offered:
        data = orjson.loads(raw)
        return cls(tuple(Option.from_dict(option) for option in data["options"]), str(data["question"]))


@dataclass(frozen=True, slots=True)
class WorkState:
    """What the worker needs to know before it generates a reply."""

    stored_reply: ReplyMessage | None
    attempt: int  # 1 + the failures recorded so far
    history: list[dict[str, str]]
    # The conversation is with a human (only read along with the memory: for an engine that costs).
    handed_off: bool = False
    # What the last reply offered (only read for a message that may choose one of them).
    offered: Offered = field(default_factory=Offered)


@dataclass(slots=True)
class Store:
    redis: Redis
    names: Names
    # Turns of memory the worker reads before generating (its commit writes them).
    memory_turns: int = 10
    # The gateway's: its admissions (rate limits and claims) and accepts share round trips.
    pipeline: AutoPipeline = field(init=False)
    _release: AsyncScript = field(init=False)
    _record_failure: AsyncScript = field(init=False)

    def __post_init__(self) -> None:
        # Registered scripts run by EVALSHA: the script text crosses the wire once, not per message.
        self.pipeline = AutoPipeline(self.redis)
        self._release = self.redis.register_script(_RELEASE)
        self._record_failure = self.redis.register_script(_RECORD_FAILURE)

    # Gateway -------------------------------------------------------------------------------
    def accept(self, message_id: str, conversation_id: str) -> None:
        """The message is queued (confirmed): its claim becomes final for the idempotency TTL, with
        the next round trip. Nobody waits for it: until it lands (or if it never does) the claim is
        a provisional one, which a retry waits out or, once stale, takes over with a marked copy."""
        self.pipeline.later(
            "SET", self.names.claim_key(message_id), f"a:{conversation_id}", "EX", IDEMPOTENCY_TTL_SECONDS
        )

    @traced_redis("release")
    async def release(self, message_id: str, token: str) -> None:
        """Give a claim back when the message could not be queued, so a retry is not a 'duplicate'."""
        await self._release([self.names.claim_key(message_id)], [token])

    @traced_redis("stored_reply")
    async def stored_reply(self, message_id: str, *, silenced: bool = False) -> ReplyMessage | None:
        """The reply the message got; None while it has none. When the bot stayed silent because
        the conversation was with a human (the agent answers it), None too, unless `silenced`:
        then a reply marked `silenced`, for callers that tell the customer so at once."""
        raw = await self.redis.get(self.names.reply_key(message_id))
        reply = ReplyMessage.from_bytes(raw) if raw else None
        return None if reply is None or (reply.silenced and not silenced) else reply

    # Worker --------------------------------------------------------------------------------
    async def begin(
        self, message: InboundMessage, *, redelivered: bool, with_history: bool, with_offered: bool
    ) -> WorkState:
        """Read what the worker must know first, in one round trip. A first delivery cannot have a
        stored reply or earlier failures, so the common case reads only the memory, and only for
        engines using it (they also learn whether the conversation is with a human, and skip
        generating then), and the options offered only for a message that may choose one: plain
        text on the knowledge-base engine reads nothing."""
        if not (redelivered or with_history or with_offered):
            return WorkState(stored_reply=None, attempt=1, history=[])
        conversation = message.conversation_id
        async with self.redis.pipeline(transaction=False) as pipe:
            if redelivered:
                pipe.get(self.names.reply_key(message.message_id))
                pipe.get(self.names.attempts_key(message.message_id))
            if with_history:
                pipe.lrange(self.names.memory_key(conversation), -2 * self.memory_turns, -1)
                pipe.exists(self.names.handoff_key(conversation))
            if with_offered:
                pipe.get(self.names.offered_key(conversation))
            with redis_span("begin"):
                results = iter(await pipe.execute())
        stored, attempt = (next(results), int(next(results) or 0) + 1) if redelivered else (None, 1)
        memory, handed_off = (next(results), bool(next(results))) if with_history else ([], False)
        offered = next(results) if with_offered else None
        return WorkState(
            stored_reply=ReplyMessage.from_bytes(stored) if stored else None,
            attempt=attempt,
            history=[orjson.loads(item) for item in memory],
            handed_off=handed_off,
            offered=Offered.from_bytes(offered) if offered else Offered(),
        )

    @traced_redis("record_failure")
    async def record_failure(self, message_id: str) -> int:
        """Count a failed attempt at a message; returns how many there have been."""
        key = self.names.attempts_key(message_id)
        failures = await self._record_failure([key, f"{key}:last"], [uuid.uuid4().hex, IDEMPOTENCY_TTL_SECONDS])
        return int(failures)

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
