"""Redis: the client, what counts as Redis being unavailable, and the operations on it that more
than one service performs (errors counted, the operators' conversation log, heartbeats).

What one service alone does with Redis lives with it: the gateway's claims and accepts
(services/gateway/claims.py, through its `AutoPipeline`), the worker's first read and failure
count (services/worker/state.py) and its commit (services/worker/commit.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis._parsers import _AsyncHiredisParser
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import stats
from shared.names import Names
from shared.redis_packing import connection_class
from shared.telemetry import traced_redis

log = logging.getLogger(__name__)
T = TypeVar("T")

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
INSTANCES_KEEP_SECONDS = 3600
# The operators' conversation log: written by the worker's commit and by the admin area's agent replies.
CONVERSATION_LOG_ENTRIES = 200
CONVERSATION_LOG_TTL_SECONDS = 7 * 24 * 3600
# The longest pause between two tries of an operation held until Redis answers.
MAX_REDIS_WAIT_S = 5.0


class RedisRefused(ResponseError):
    """Redis answered but will not do the work now: snapshots failing (MISCONF), too few replicas,
    a primary down, a script hogging it (BUSY). Like OOM and READONLY, this is "Redis unavailable"."""


class _Parser(_AsyncHiredisParser):
    """Replies parsed by hiredis (C), RESP3 pushes included: with redis-py's parser, in Python, a
    pipelined script call cost the client nearly twice the CPU (71-79 us against 38-48 us).

    Refusals get their own exception class, so every `except REDIS_ERRORS` treats them as an
    outage, while a real error in a command or a script stays a ResponseError (a bug)."""

    EXCEPTION_CLASSES = {  # noqa: RUF012 (the base class declares it so)
        **_AsyncHiredisParser.EXCEPTION_CLASSES,
        **dict.fromkeys(("MISCONF", "NOREPLICAS", "MASTERDOWN", "BUSY", "CLUSTERDOWN"), RedisRefused),
    }


# Redis cannot be reached or refuses writes: wait and retry (worker), 503 (edge); never a bug.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, OutOfMemoryError, ReadOnlyError, RedisRefused)

REDIS_POOL_SIZE = 100
REDIS_POOL_WAIT_S = 5.0


def client_options() -> dict[str, Any]:
    """How every connection to Redis behaves, to one server or to the primary Sentinel names."""
    return {
        "parser_class": _Parser,
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def create_redis(url: str, **tls: Any) -> Redis:
    # A short retry rides over a dropped connection; longer outages surface as errors that the
    # callers turn into 503s (gateway) or an in-place wait (worker). The pool blocks: a burst of
    # requests waits for a free connection instead of failing. `tls`: shared/redis_client.py.
    # The connections pack commands faster (shared/redis_packing.py), of the URL's kind still.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_S,
        connection_class=connection_class(url),
        **client_options(),
        **tls,
    )
    return Redis.from_pool(pool)


@dataclass(slots=True)
class Store:
    """The operations several services perform; each service's own are in its subclass
    (services/gateway/claims.py `GatewayStore`, services/worker/state.py `WorkerStore`)."""

    redis: Redis
    names: Names

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


async def until_redis_answers(operation: Callable[[], Awaitable[T]], *, holding: str) -> T:
    """Run `operation` until Redis answers, pausing longer after each outage error (up to
    MAX_REDIS_WAIT_S): for work that Redis being down must not fail (a delivery waits in place,
    keeping its order, rather than spend an attempt). `holding`: what waits, for the warning."""
    attempt = 0
    while True:
        try:
            return await operation()
        except REDIS_ERRORS as exc:
            if attempt == 0:
                log.warning("Redis unavailable, holding %s until it answers: %s", holding, exc)
            attempt += 1
            await asyncio.sleep(min(MAX_REDIS_WAIT_S, 0.1 * 2**attempt))


async def redis_check(redis: Redis) -> dict[str, Any]:
    """A health check entry: up with the ping's latency, or down with the reason. Behind Sentinel
    also the primary in use, and `failover: true` while the sentinels answer but no primary does
    (a failover running: the system is degraded, not dead)."""
    started = time.perf_counter()
    try:
        await redis.ping()
    except REDIS_ERRORS as exc:
        down: dict[str, Any] = {"status": "down", "error": str(exc) or type(exc).__name__}
        return down | await _sentinel_view(redis, failing=True)
    up = {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    return up | await _sentinel_view(redis, failing=False)


async def _sentinel_view(redis: Redis, *, failing: bool) -> dict[str, Any]:
    pool = redis.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return {}
    if not failing and pool.master_address is not None:
        host, port = pool.master_address
        return {"primary": f"{host}:{port}"}
    try:
        host, port = await pool.sentinel_manager.discover_master(pool.service_name)
    except MasterNotFoundError:
        # No sentinel names a primary: reachable sentinels mean one is being elected.
        return {"failover": await _sentinels_answer(pool)}
    except REDIS_ERRORS:
        return {}
    return {"primary": f"{host}:{port}", "failover": failing}


async def _sentinels_answer(pool: SentinelConnectionPool) -> bool:
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            await sentinel.ping()
            return True
        except REDIS_ERRORS:
            continue
    return False
