"""A lock in Redis for work that several monitors or workers may start at once but one at a time must
do (the retention sweep, passes over the dead-letter queue). It expires by itself, so a holder that
died frees it; only its holder releases it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis

POLL_S = 0.05

# KEYS: the lock. ARGV: its holder. Deletes it only if still held by the one releasing it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockBusy(Exception):
    """Another holder kept the lock for longer than the caller would wait."""


async def try_lock(redis: Redis, key: str, ttl_s: int) -> str | None:
    """The holder's token when taken, None when someone holds it."""
    holder = secrets.token_hex(8)
    return holder if await redis.set(key, holder, nx=True, ex=ttl_s) else None


async def release(redis: Redis, key: str, holder: str) -> None:
    await redis.eval(_RELEASE, 1, key, holder)


@contextlib.asynccontextmanager
async def held(redis: Redis, key: str, ttl_s: int, wait_s: float) -> AsyncIterator[None]:
    """Wait (up to `wait_s`, then LockBusy) for the lock, hold it for the block."""
    deadline = time.monotonic() + wait_s
    while (holder := await try_lock(redis, key, ttl_s)) is None:
        if time.monotonic() > deadline:
            raise LockBusy(key)
        await asyncio.sleep(POLL_S)
    try:
        yield
    finally:
        await release(redis, key, holder)
