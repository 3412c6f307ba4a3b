"""Rate limits shared by every gateway replica: token buckets in Redis, taken atomically in Lua.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; a message takes one.
The clock is Redis's own (`TIME`), so replicas with skewed clocks still share one bucket fairly.
SPEC: `RATE_LIMIT_PER_USER` and `RATE_LIMIT_PER_IP` are sustained messages per second with bursts
of twice that; 0 turns a limit off. Users are limited per channel and sender (`whatsapp:5511...`),
so a platform that posts every customer's webhook from one IP is never limited as one client.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.names import Names, route_token
from shared.pipelining import AutoPipeline, Script
from shared.store import REDIS_ERRORS
from shared.web import Problem, client_address

log = logging.getLogger(__name__)

# KEYS: one bucket per limit. ARGV: cost, then rate and burst for each key, then the request's token.
# Tokens are taken only when every bucket has enough, so a request refused by one limit does not
# spend the others. Returns {1, 0} when allowed, else {0, milliseconds until it would be}. The
# token makes a resent call (redis-py repeats one whose reply was lost) find its own take.
_TAKE = """
local token = ARGV[#ARGV]
if redis.call('HGET', KEYS[1], 'req') == token then
  return {1, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cost = tonumber(ARGV[1])
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  levels[i] = tokens
  if tokens < cost then
    wait = math.max(wait, (cost - tokens) / rate)
  end
end
if wait > 0 then
  return {0, math.ceil(wait * 1000)}
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  redis.call('HSET', key, 'tokens', levels[i] - cost, 'at', now, 'req', token)
  -- A bucket left alone refills completely in burst/rate seconds; after that it need not exist.
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return {1, 0}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate` tokens per second, up to `burst`; a rate of 0 means no limit."""

    rate: float
    burst: float

    @classmethod
    def per_second(cls, rate: float) -> Limit:
        return cls(rate, 2 * rate)

    @property
    def enabled(self) -> bool:
        return self.rate > 0


@dataclass(slots=True)
class TokenBuckets:
    """Named buckets under one prefix; `take` answers how long to wait (0: go ahead). Takes go
    through the gateway's `AutoPipeline`, with the claims of the same requests."""

    pipeline: AutoPipeline
    prefix: str
    _take: Script = field(init=False)

    def __post_init__(self) -> None:
        self._take = Script.of(self.pipeline.redis, _TAKE)

    def key(self, scope: str, subject: str) -> str:
        # Hashed: keys stay short and carry no phone number or address in clear.
        return f"{self.prefix}:{scope}:{route_token(subject)}"

    async def take(self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0) -> float:
        active = [(key, limit) for key, limit in buckets if limit.enabled]
        if not active:
            return 0.0
        args: list[float | str] = [cost]
        for _, limit in active:
            args += [limit.rate, max(limit.burst, cost)]
        args.append(uuid.uuid4().hex)
        allowed, wait_ms = await self.pipeline.run(self._take, [key for key, _ in active], args)
        return 0.0 if allowed else int(wait_ms) / 1000


def too_many(wait_s: float, who: str) -> Problem:
    seconds = max(1, math.ceil(wait_s))
    return Problem(
        429,
        f"{who}: rate limit exceeded; retry after {seconds} s",
        title="Too Many Requests",
        headers={"Retry-After": str(seconds)},
    )


@dataclass(frozen=True, slots=True)
class RateLimiter:
    """The gateway's two limits of SPEC section 2. Redis down fails open: a message that cannot be
    counted is still better accepted (Intake answers 503 anyway when Redis is really gone)."""

    buckets: TokenBuckets
    per_user: Limit
    per_ip: Limit

    @classmethod
    def create(cls, pipeline: AutoPipeline, names: Names, per_user: float, per_ip: float) -> RateLimiter:
        buckets = TokenBuckets(pipeline, names.rate_limit_prefix)
        return cls(buckets, Limit.per_second(per_user), Limit.per_second(per_ip))

    async def check_user(self, channel: str, user_id: str) -> None:
        await self._check(self.buckets.key("user", f"{channel}:{user_id}"), self.per_user, "user_id")

    async def check_ip(self, address: str) -> None:
        await self._check(self.buckets.key("ip", address), self.per_ip, "client address")

    async def _check(self, key: str, limit: Limit, who: str) -> None:
        if not limit.enabled:
            return
        try:
            wait = await self.buckets.take([(key, limit)])
        except REDIS_ERRORS as exc:
            log.warning("rate limit not checked, Redis unavailable: %s", exc)
            return
        if wait > 0:
            raise too_many(wait, who)


def ip_limit_middleware(
    limiter: web.AppKey[RateLimiter],
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> Middleware:
    """Per-address limit on messages posted to the API (`POST /v1/*`); webhooks come from the
    platforms' few addresses and are limited per sender instead, in `Intake`."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "POST" and request.path.startswith("/v1/"):
            await request.app[limiter].check_ip(client_address(request, trusted))
        return await handler(request)

    return middleware
