"""Redis: the client and the few operations the services perform on it.

Every operation is one round trip (a pipeline or a Lua script), so the hot path pays a fixed,
small number of them per message: one claim in the gateway, one read and one commit in the worker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import stats
from shared.messages import InboundMessage, ReplyMessage
from shared.names import Names
from shared.telemetry import redis_span, traced_redis

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
USERS_KEEP_SECONDS = 25 * 3600
INSTANCES_KEEP_SECONDS = 3600
CONVERSATION_LOG_ENTRIES = 200
CONVERSATION_LOG_TTL_SECONDS = 7 * 24 * 3600

# Store the reply unless one is there already; only the first writer counts the message in the
# stats, appends the turn to memory and to the operators' conversation log, so a redelivered or raced
# message is never counted twice.
_COMMIT_REPLY = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return redis.call('GET', KEYS[1])
end
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
end
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('EXPIRE', KEYS[3], ARGV[11])
redis.call('HINCRBY', KEYS[4], 'n', 1)
redis.call('ZADD', KEYS[5], ARGV[9], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(ARGV[9]) - tonumber(ARGV[15]))
local keep = tonumber(ARGV[12])
if keep > 0 then
  redis.call('RPUSH', KEYS[6], ARGV[13], ARGV[14])
  redis.call('LTRIM', KEYS[6], -keep, -1)
  redis.call('EXPIRE', KEYS[6], ARGV[16])
end
redis.call('DEL', KEYS[7])
redis.call('RPUSH', KEYS[8], ARGV[17])
redis.call('LTRIM', KEYS[8], -tonumber(ARGV[18]), -1)
redis.call('EXPIRE', KEYS[8], ARGV[19])
redis.call('ZADD', KEYS[9], ARGV[9], ARGV[20])
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', tonumber(ARGV[9]) - tonumber(ARGV[19]))
return false
"""

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


@dataclass(slots=True)
class Store:
    redis: Redis
    names: Names
    memory_turns: int = 10
    memory_ttl_s: int = 86_400
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
    async def stored_reply(self, message_id: str) -> ReplyMessage | None:
        raw = await self.redis.get(self.names.reply_key(message_id))
        return ReplyMessage.from_bytes(raw) if raw else None

    # Worker --------------------------------------------------------------------------------
    async def begin(self, message: InboundMessage, *, redelivered: bool, with_history: bool) -> WorkState:
        """Read what the worker must know first. A first delivery cannot have a stored reply or
        earlier failures, so the common case reads only the memory, and only for engines using it."""
        if not redelivered and not with_history:
            return WorkState(stored_reply=None, attempt=1, history=[])
        async with self.redis.pipeline(transaction=False) as pipe:
            if redelivered:
                pipe.get(self.names.reply_key(message.message_id))
                pipe.get(self.names.attempts_key(message.message_id))
            if with_history:
                pipe.lrange(self.names.memory_key(message.conversation_id), -2 * self.memory_turns, -1)
            with redis_span("begin"):
                results = await pipe.execute()
        stored, attempt = (results[0], int(results[1] or 0) + 1) if redelivered else (None, 1)
        memory = results[-1] if with_history else []
        return WorkState(
            stored_reply=ReplyMessage.from_bytes(stored) if stored else None,
            attempt=attempt,
            history=[orjson.loads(item) for item in memory],
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
    async def commit(self, items: Sequence[tuple[InboundMessage, ReplyMessage, Timings]]) -> list[ReplyMessage]:
        """Store each reply, count it and remember the turn, once, in one round trip. Returns the
        replies that stand: ours, or those another delivery of the same message committed first."""
        if not items:
            return []
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for message, reply, timings in items:
                keys, args = self._commit_arguments(message, reply, timings, now)
                await self._commit_reply(keys, args, client=pipe)
            existing = await pipe.execute()
        return [
            ReplyMessage.from_bytes(stored) if stored else reply
            for stored, (_, reply, _) in zip(existing, items, strict=True)
        ]

    def _commit_arguments(
        self, message: InboundMessage, reply: ReplyMessage, timings: Timings, now: float
    ) -> tuple[list[str], list[Any]]:
        names = self.names
        keys = [
            names.reply_key(message.message_id),
            names.stats_fine_key(stats.slice_start(now, stats.FINE_SECONDS)),
            names.stats_hour_key(stats.slice_start(now, stats.HOUR_SECONDS)),
            names.stats_total_key,
            names.users_key,
            names.memory_key(message.conversation_id),
            names.attempts_key(message.message_id),
            names.conversation_log_key(message.conversation_id),
            names.conversations_key,
        ]
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
            orjson.dumps({"role": "user", "text": message.text}),
            orjson.dumps({"role": "assistant", "text": reply.reply.text}),
            USERS_KEEP_SECONDS,
            self.memory_ttl_s,
            orjson.dumps(
                {
                    "message_id": message.message_id,
                    "channel": message.channel,
                    "user_id": message.user_id,
                    "text": message.text,
                    "accepted_at": message.accepted_at_ms / 1000,
                    "replied_at": now,
                    "reply": reply.reply.to_dict(),
                    "latency_ms": round(timings.end_to_end_ms, 2),
                    "queue_wait_ms": round(timings.queue_wait_ms, 2),
                    "processing_ms": round(timings.processing_ms, 2),
                }
            ),
            CONVERSATION_LOG_ENTRIES,
            CONVERSATION_LOG_TTL_SECONDS,
            message.conversation_id,
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


async def redis_check(redis: Redis) -> dict[str, Any]:
    """A health check entry: up with the ping's latency, or down with the reason."""
    started = time.perf_counter()
    try:
        await redis.ping()
    except REDIS_ERRORS as exc:
        return {"status": "down", "error": str(exc) or type(exc).__name__}
    return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
