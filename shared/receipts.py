"""What became of each message sent on a channel (SPEC 4 `delivery`): written by the gateway's
delivery (the platform took it) and by WhatsApp's `statuses` notifications (sent, delivered, read,
failed with the Graph API's error code and title); read by `GET /v1/messages/{id}` and the admin
conversation view.

One hash per message, keyed by our message id (a reply's is its inbound message's). A WhatsApp
send returns the platform's own id (`wamid`), which its statuses name; the wamid points back to our
id. Statuses may arrive out of order (Meta does not promise the order): each is kept with its time,
and the current one only moves forward (accepted < sent < delivered < read < failed).
A proactive message's hash also holds where it went (`channel`, `to`, `conversation_id`).

How long: RECEIPT_TTL_S after its latest write, as long as the conversation log that shows it, and
never past RETENTION_DAYS after its first write (SPEC 2: outbound records older than that are
removed). Bounded by its TTL, not by the monitor's retention sweep: nothing indexes the receipts, so
a sweep would have to scan the namespace every hour, while every write already sets the TTL. The
first write's time (`since`, Redis's clock) is kept in the hash, so a late status (a "read" days
later) renews the TTL only up to that bound. A wamid's pointer lives no longer than its receipt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from shared.messages import ReplyMessage
from shared.names import Names
from shared.store import CONVERSATION_LOG_TTL_SECONDS

# Our own "the platform took it", then WhatsApp's statuses, in the order they can only move.
RANKS = {"accepted": 1, "sent": 2, "delivered": 3, "read": 4, "failed": 5}
STATUSES = tuple(RANKS)
# As long as the conversation log that shows them.
RECEIPT_TTL_S = CONVERSATION_LOG_TTL_SECONDS
MAX_ERROR_TEXT = 300

# `left(key, ttl, retention)`: the seconds a receipt may live from now (0: it is past RETENTION_DAYS
# already), keeping its first write's time in `since`; the caller writes, then EXPIREs it by that.
_LEFT = """
local function left(key, ttl, retention)
  local now = tonumber(redis.call('TIME')[1])
  local since = tonumber(redis.call('HGET', key, 'since'))
  if not since then
    since = now
    redis.call('HSET', key, 'since', since)
  end
  local n = math.min(tonumber(ttl), since + tonumber(retention) - now)
  if n <= 0 then
    redis.call('DEL', key)
    return 0
  end
  return n
end
"""

# KEYS[1] the receipt, KEYS[2] (optional) a wamid that names it; ARGV: status, rank, at (s), ttl,
# error code, title, detail, the message id (with KEYS[2]), RETENTION_DAYS in seconds.
_RECORD = (
    _LEFT
    + """
local ttl = left(KEYS[1], ARGV[4], ARGV[9])
if ttl == 0 then
  return 0
end
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[8], 'EX', ttl)
end
redis.call('HSET', KEYS[1], ARGV[1] .. '_at', ARGV[3])
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], 'rank') or '0') then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'rank', ARGV[2])
end
if ARGV[1] == 'failed' then
  redis.call('HSET', KEYS[1], 'error_code', ARGV[5], 'error_title', ARGV[6], 'error_detail', ARGV[7])
end
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""
)

# KEYS[1] the receipt; ARGV: ttl, RETENTION_DAYS in seconds, then the fields and values to set.
_ADDRESS = (
    _LEFT
    + """
local ttl = left(KEYS[1], ARGV[1], ARGV[2])
if ttl == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the platform did not deliver: the Graph API's error code (e.g. 131047, outside the
    24-hour window) and title, or our own delivery's reason (code 0)."""

    code: int
    title: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "title": self.title, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One status of one message, as the platform reported it."""

    status: str
    at_s: float
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class Receipts:
    redis: Redis
    names: Names
    # RETENTION_DAYS in seconds (Settings.retention_s): no receipt outlives it.
    retention_s: int

    async def record(self, message_id: str, update: StatusUpdate, wamid: str = "") -> None:
        """Raises REDIS_ERRORS. `wamid`: the platform's id of the message, which its statuses name."""
        failure = update.failure or Failure(0, "")
        keys = [self.names.receipt_key(message_id), *([self.names.wamid_key(wamid)] if wamid else [])]
        # EVALSHA: a status arrives for every message sent; the script's text need not travel each time.
        await self.redis.register_script(_RECORD)(
            keys=keys,
            args=[
                update.status,
                RANKS[update.status],
                round(update.at_s, 3),
                RECEIPT_TTL_S,
                failure.code,
                failure.title[:MAX_ERROR_TEXT],
                failure.detail[:MAX_ERROR_TEXT],
                message_id,
                self.retention_s,
            ],
        )

    async def accepted(self, message_id: str, at_s: float, wamid: str = "") -> None:
        """The platform took (a part of) the message; `wamid` is its id, for WhatsApp."""
        await self.record(message_id, StatusUpdate("accepted", at_s), wamid)

    async def addressed(self, reply: ReplyMessage) -> None:
        """A proactive message was queued: where it goes (raises REDIS_ERRORS)."""
        fields = ["channel", reply.channel, "to", reply.user_id, "conversation_id", reply.conversation_id]
        await self.redis.register_script(_ADDRESS)(
            keys=[self.names.receipt_key(reply.message_id)], args=[RECEIPT_TTL_S, self.retention_s, *fields]
        )

    async def proactive(self, message_id: str) -> dict[str, Any] | None:
        """A proactive message as `GET /v1/messages/{id}` shows it, None when there is none."""
        raw = await self.redis.hgetall(self.names.receipt_key(message_id))
        if "channel" not in raw:
            return None
        return {"channel": raw["channel"], "to": raw["to"], "delivery": delivery_view(raw)}

    async def message_of(self, wamid: str) -> str | None:
        value = await self.redis.get(self.names.wamid_key(wamid))
        return None if value is None else str(value)

    async def describe(self, message_id: str) -> dict[str, Any] | None:
        """The `delivery` object of SPEC 4, or None when nothing is known of it yet."""
        return delivery_view(await self.redis.hgetall(self.names.receipt_key(message_id)))

    async def describe_many(self, message_ids: list[str]) -> dict[str, dict[str, Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hgetall(self.names.receipt_key(message_id))
            found = await pipe.execute()
        views = {message_id: delivery_view(raw) for message_id, raw in zip(message_ids, found, strict=True)}
        return {message_id: view for message_id, view in views.items() if view is not None}


def delivery_view(raw: Mapping[Any, Any]) -> dict[str, Any] | None:
    """`{"status", "updated_at", "history": {status: time}, "error"}` with ISO 8601 UTC times."""
    status = raw.get("status")
    if not status:
        return None
    history = {name: _iso(float(raw[f"{name}_at"])) for name in STATUSES if f"{name}_at" in raw}
    error = None
    if status == "failed":
        code, title, detail = raw.get("error_code", 0), raw.get("error_title", ""), raw.get("error_detail", "")
        error = Failure(int(code), str(title), str(detail))
    return {
        "status": str(status),
        "updated_at": history.get(str(status)),
        "history": history,
        "error": None if error is None else error.to_dict(),
    }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
