"""The gateway's own Redis operations: a message id's claim (what makes intake idempotent), from
admission (services/gateway/admission.py runs CLAIM_FUNCTION with the rate limits) to accept or
release, and the reply stored under the message id, which a repeated request gets.

Its admissions and accepts go through one `AutoPipeline`: those of all the requests in flight
share each round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.commands.core import AsyncScript

from services.gateway.pipelining import AutoPipeline
from shared.messages import ReplyMessage
from shared.store import IDEMPOTENCY_TTL_SECONDS, Store
from shared.telemetry import traced_redis

# A message's claim: provisional while its publish waits for the broker's confirm, accepted after.
#   p:<token>:<ttl ms>:<conversation>   (token: the claiming request's, so a resent command
#                                        recognises its own write; ttl ms: the time to live it was
#                                        written with, so its age is that less what is left of it)
#   a:<conversation>
# A Lua function, run by the gateway's admission script with the message's rate limits
# (services/gateway/admission.py). key: the claim. token: the claiming request's. conversation.
# stale_ms: ms after which an unconfirmed claim is stale. ttl: the claim's.
# Returns {0} won, {1, conversation} accepted before, {2, ms} another request's claim is still
# being published (ask again within ms), {3} won over a stale claim: the message may be queued
# already (its gateway died after the confirm), so this copy is marked as one.
# A new id (nearly every message) costs one command: SET NX GET writes the claim and says what was
# there. A claim's age comes from Redis's own clock (its PTTL), whichever gateway wrote it; a claim
# written in the older form (`p:<token>:<since ms>:...`) reads as stale, so it is taken over as a
# marked copy, which the worker recognises.
CLAIM_FUNCTION = """
local function claim(key, token, conversation, stale_ms, ttl)
  local ttl_ms = tonumber(ttl) * 1000
  local mine = 'p:' .. token .. ':' .. ttl_ms .. ':' .. conversation
  local current = redis.call('SET', key, mine, 'NX', 'GET', 'EX', ttl)
  if not current then
    return {0}
  end
  if string.sub(current, 1, 2) ~= 'p:' then
    return {1, string.sub(current, 1, 2) == 'a:' and string.sub(current, 3) or current}
  end
  local token_end = string.find(current, ':', 3, true)
  if string.sub(current, 3, token_end - 1) == token then
    return {0}
  end
  local written_end = string.find(current, ':', token_end + 1, true)
  local age = tonumber(string.sub(current, token_end + 1, written_end - 1)) - redis.call('PTTL', key)
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

# A claim not confirmed within this many ms is taken over by a retry (its gateway died mid-publish).
PROVISIONAL_CLAIM_MS = 10_000


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


@dataclass(slots=True)
class GatewayStore(Store):
    """The shared operations, and the gateway's claims and stored replies."""

    # Its admissions (rate limits and claims) and accepts share round trips.
    pipeline: AutoPipeline = field(init=False)
    _release: AsyncScript = field(init=False)

    def __post_init__(self) -> None:
        # Registered scripts run by EVALSHA: the script text crosses the wire once, not per message.
        self.pipeline = AutoPipeline(self.redis)
        self._release = self.redis.register_script(_RELEASE)

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
