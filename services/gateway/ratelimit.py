"""Rate limits shared by every gateway replica: token buckets in Redis, taken atomically in Lua.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; a message takes one.
The clock is Redis's own (`TIME`), so replicas with skewed clocks still share one bucket fairly.
SPEC: `RATE_LIMIT_PER_USER` and `RATE_LIMIT_PER_IP` are sustained messages per second with bursts
of twice that; 0 turns a limit off. Users are limited per channel and sender (`whatsapp:5511...`),
so a platform that posts every customer's webhook from one IP is never limited as one client.
A message's limits are taken in the same script call as the claim of its id
(services/gateway/admission.py): one command per message, not one per limit and one for the claim.
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

from services.gateway.pipelining import AutoPipeline, Script
from shared.names import Names, route_token
from shared.store import REDIS_ERRORS
from shared.web import Problem, client_address

log = logging.getLogger(__name__)

# A Lua function, shared with the gateway's admission script (services/gateway/admission.py).
# keys: one bucket per limit. argv: cost, then rate and burst for each key, then the request's
# token. t: Redis's TIME. Tokens are taken only when every bucket has enough, so a request refused
# by one limit does not spend the others. Returns {1, 0, 0} when allowed, else {0, milliseconds
# until it would be, the first bucket refusing}. The token makes a resent call (redis-py repeats
# one whose reply was lost) find its own take.
TAKE_FUNCTION = """
local function take(keys, argv, t)
  local token = argv[#argv]
  if redis.call('HGET', keys[1], 'req') == token then
    return {1, 0, 0}
  end
  local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local cost = tonumber(argv[1])
  local levels = {}
  local wait = 0
  local refused = 0
  for i, key in ipairs(keys) do
    local rate = tonumber(argv[2 * i])
    local burst = tonumber(argv[2 * i + 1])
    local state = redis.call('HMGET', key, 'tokens', 'at')
    local tokens = tonumber(state[1]) or burst
    local at = tonumber(state[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
    levels[i] = tokens
    if tokens < cost then
      wait = math.max(wait, (cost - tokens) / rate)
      if refused == 0 then
        refused = i
      end
    end
  end
  if wait > 0 then
    return {0, math.ceil(wait * 1000), refused}
  end
  for i, key in ipairs(keys) do
    local rate = tonumber(argv[2 * i])
    local burst = tonumber(argv[2 * i + 1])
    redis.call('HSET', key, 'tokens', levels[i] - cost, 'at', now, 'req', token)
    -- A bucket left alone refills completely in burst/rate seconds; after that it need not exist.
    redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  end
  return {1, 0, 0}
end
"""

# KEYS and ARGV: those of `take`.
_TAKE = TAKE_FUNCTION + "return take(KEYS, ARGV, redis.call('TIME'))\n"


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
        args = [*take_arguments([limit for _, limit in active], cost), uuid.uuid4().hex]
        allowed, wait_ms, _ = await self.pipeline.run(self._take, [key for key, _ in active], args)
        return 0.0 if allowed else int(wait_ms) / 1000


def take_arguments(limits: Sequence[Limit], cost: float = 1.0) -> list[float | str]:
    """`take`'s argv for these limits, all enabled, less the request's token."""
    args: list[float | str] = [cost]
    for limit in limits:
        args += [limit.rate, max(limit.burst, cost)]
    return args


@dataclass(frozen=True, slots=True)
class Bucket:
    """One enabled limit on one subject; `who` names the subject in a 429's detail."""

    key: str
    limit: Limit
    who: str


USER_WHO = "user_id"
ADDRESS_WHO = "client address"


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
    """The gateway's two limits of SPEC section 2. Taken with a message's claim, they share its
    fate: Redis down is a 503. Taken alone (`check_ip`), Redis down fails open: the request is
    still better handled (Intake answers 503 anyway when Redis is really gone)."""

    buckets: TokenBuckets
    per_user: Limit
    per_ip: Limit

    @classmethod
    def create(cls, pipeline: AutoPipeline, names: Names, per_user: float, per_ip: float) -> RateLimiter:
        buckets = TokenBuckets(pipeline, names.rate_limit_prefix)
        return cls(buckets, Limit.per_second(per_user), Limit.per_second(per_ip))

    def buckets_of(self, sender: tuple[str, str], address: str | None) -> list[Bucket]:
        """The enabled limits a message is taken from: its client address's first (API requests
        only), then its sender's (channel and user id)."""
        buckets = []
        if address is not None and self.per_ip.enabled:
            buckets.append(Bucket(self.buckets.key("ip", address), self.per_ip, ADDRESS_WHO))
        if self.per_user.enabled:
            buckets.append(Bucket(self.buckets.key("user", ":".join(sender)), self.per_user, USER_WHO))
        return buckets

    async def check_ip(self, address: str) -> None:
        await self._check(self.buckets.key("ip", address), self.per_ip, ADDRESS_WHO)

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


@dataclass(slots=True)
class AddressCharge:
    """The client address a `POST /v1/*` request is limited by. The intake takes its token in the
    same script call as the message's claim, and marks it `charged`; a request that never gets that
    far (a bad body, the broker down) is charged by the middleware once its handler is done."""

    address: str
    charged: bool = False


ADDRESS_CHARGE = web.RequestKey("address_charge", AddressCharge)


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
        if request.method != "POST" or not request.path.startswith("/v1/"):
            return await handler(request)
        charge = request[ADDRESS_CHARGE] = AddressCharge(client_address(request, trusted))
        try:
            return await handler(request)
        finally:
            if not charge.charged:
                # Over the limit, the 429 replaces whatever the handler answered: a request is
                # refused for its address whether or not it would have failed otherwise.
                await request.app[limiter].check_ip(charge.address)

    return middleware
