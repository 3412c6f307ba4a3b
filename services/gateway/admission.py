"""Admitting a message: its rate limits and the claim of its id, in one Redis script call.

A message used to cost a script call per limit (address, sender) and one for its claim; here they
are one command, and through the gateway's `AutoPipeline` the calls of all the requests in flight
share each round trip. The accept after the publish's confirm stays a command of its own, sent
with the next round trip (Store.accept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.gateway.claims import CLAIM_FUNCTION, PROVISIONAL_CLAIM_MS, Claim
from services.gateway.pipelining import AutoPipeline, Script
from services.gateway.ratelimit import TAKE_FUNCTION, Bucket, take_arguments
from shared.names import Names
from shared.store import IDEMPOTENCY_TTL_SECONDS
from shared.telemetry import traced_redis

# KEYS: 1 the claim, then a bucket per rate limit. ARGV: 1 the request's token, 2 conversation,
# 3 ms after which an unconfirmed claim is stale, 4 claim ttl, then (with buckets) the cost and each
# bucket's rate and burst. The limits are taken first, all or none, and a refused message claims
# nothing: {4, ms until it would be allowed, the first bucket refusing (1-based)}. Else what
# `claim` answers. One token serves both: a call resent after its reply was lost finds its own
# take and its own claim. Redis's TIME is read only for the limits' buckets (the claim needs none).
_ADMIT = (
    TAKE_FUNCTION
    + CLAIM_FUNCTION
    + """
if #KEYS > 1 then
  local limits = {unpack(ARGV, 5)}
  limits[#limits + 1] = ARGV[1]
  local taken = take({unpack(KEYS, 2)}, limits, redis.call('TIME'))
  if taken[1] == 0 then
    return {4, taken[2], taken[3]}
  end
end
return claim(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4])
"""
)
_REFUSED = 4


@dataclass(frozen=True, slots=True)
class Refused:
    """A rate limit refused the message, which claimed nothing: `who` may retry in `wait_s`."""

    wait_s: float
    who: str


@dataclass(slots=True)
class Admission:
    pipeline: AutoPipeline
    names: Names
    _script: Script = field(init=False)

    def __post_init__(self) -> None:
        self._script = Script.of(self.pipeline.redis, _ADMIT)

    @traced_redis("claim")
    async def admit(
        self, message_id: str, conversation_id: str, token: str, buckets: Sequence[Bucket]
    ) -> Claim | Refused:
        """Take the buckets' tokens, then claim the id, provisionally: `Store.accept` makes the
        claim final once the message is queued. The token makes the call safe to resend (redis-py
        repeats a command whose reply was lost): the repeat finds its own take and claim, neither
        a second take nor a 'duplicate'."""
        args: list[str | int | float] = [token, conversation_id, PROVISIONAL_CLAIM_MS, IDEMPOTENCY_TTL_SECONDS]
        if buckets:
            args += take_arguments([bucket.limit for bucket in buckets])
        keys = [self.names.claim_key(message_id), *(bucket.key for bucket in buckets)]
        reply = await self.pipeline.run(self._script, keys, args)
        if int(reply[0]) == _REFUSED:
            return Refused(wait_s=int(reply[1]) / 1000, who=buckets[int(reply[2]) - 1].who)
        return Claim.from_reply(token, reply)
