"""What has gone out for one reply, in Redis, so that no copy of it is ever sent twice.

One hash per reply (`Names.delivered_key`): `sent` counts the parts the platform confirmed, `done`
marks the whole reply delivered, and `owner`/`until` is a lease: the one consumer that may send
this reply now. Copies of a reply meet in three ways, and the lease covers all three: the worker
re-publishes a stored reply after its own crash; RabbitMQ redelivers after a consumer dies; and a
consumer cut off from RabbitMQ (but still running and sending) sees its delivery handed to
another. The newcomer waits while the lease is held, then either finds `done` and drops its copy,
or takes over at the first part not yet confirmed. Times are Redis's own clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from shared.names import Names
from shared.store import IDEMPOTENCY_TTL_SECONDS

# Returns {-1, 0} when the reply is done, {-2, ms} while another owner's lease runs for ms more,
# else {sent, 0} with the lease now ours.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HGET', KEYS[1], 'done') then
  return {-1, 0}
end
local owner = redis.call('HGET', KEYS[1], 'owner')
local lease_end = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if owner and owner ~= ARGV[1] and lease_end > now then
  return {-2, lease_end - now}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', now + tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {tonumber(redis.call('HGET', KEYS[1], 'sent') or '0'), 0}
"""

# Extends our lease and records confirmed parts; 0 when the lease is no longer ours.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sent = tonumber(ARGV[3])
if sent > tonumber(redis.call('HGET', KEYS[1], 'sent') or '0') then
  redis.call('HSET', KEYS[1], 'sent', sent)
end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'until', now + tonumber(ARGV[2]))
return 1
"""

# Ends our lease; with ARGV[2] == '1' the reply is also marked delivered.
_RELEASE = """
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'done', '1')
end
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'owner', 'until')
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """What taking a reply's lease (`acquire`) found: done, busy for `wait_s`, or ours from part `sent` on."""

    done: bool = False
    wait_s: float = 0.0
    sent: int = 0


@dataclass(frozen=True, slots=True)
class Ledger:
    redis: Redis
    names: Names

    async def acquire(self, message_id: str, owner: str, lease_s: float) -> Lease:
        key = self.names.delivered_key(message_id)
        state, wait_ms = await self.redis.eval(_ACQUIRE, 1, key, owner, int(lease_s * 1000), IDEMPOTENCY_TTL_SECONDS)
        if state == -1:
            return Lease(done=True)
        if state == -2:
            return Lease(wait_s=int(wait_ms) / 1000)
        return Lease(sent=int(state))

    async def renew(self, message_id: str, owner: str, lease_s: float, sent: int) -> bool:
        """Keep the lease for `lease_s` more and record `sent` confirmed parts; False if lost."""
        key = self.names.delivered_key(message_id)
        return bool(await self.redis.eval(_RENEW, 1, key, owner, int(lease_s * 1000), sent))

    async def finish(self, message_id: str, owner: str) -> None:
        await self.redis.eval(_RELEASE, 1, self.names.delivered_key(message_id), owner, "1")

    async def release(self, message_id: str, owner: str) -> None:
        await self.redis.eval(_RELEASE, 1, self.names.delivered_key(message_id), owner, "0")
