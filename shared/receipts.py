"""What became of each message sent on a channel (SPEC 4 `delivery`): written by the gateway's
delivery (the platform took it) and by WhatsApp's `statuses` notifications (sent, delivered, read,
failed with the Graph API's error code and title); read by `GET /v1/messages/{id}` and the admin
conversation view.

One hash per message, keyed by our message id (a reply's is its inbound message's). A WhatsApp
send returns the platform's own id (`wamid`), which its statuses name; the wamid points back to our
id. Statuses may arrive out of order (Meta does not promise the order): each is kept with its time,
and the current one only moves forward (accepted < sent < delivered < read < failed).
A status may also arrive before the send that returned its wamid was recorded (the notification
and the send's answer race): it waits, EARLY_STATUS_TTL_S at most, and the recording applies it.
A proactive message's hash also holds where it went (`channel`, `to`, `conversation_id`).

How long: RECEIPT_TTL_S after its latest write, as long as the conversation log that shows it, and
never past RETENTION_DAYS after its first write (SPEC 2: outbound records older than that are
removed). Bounded by its TTL, not by the monitor's retention sweep: nothing indexes the receipts, so
a sweep would have to scan the namespace every hour, while every write already sets the TTL. The
first write's time (`since`, Redis's clock) is kept in the hash, so a late status (a "read" days
later) renews the TTL only up to that bound. A wamid's pointer lives no longer than its receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.messages import ReplyMessage
from shared.metrics import DeliveryMetrics
from shared.names import Names
from shared.store import CONVERSATION_LOG_TTL_SECONDS

log = logging.getLogger(__name__)

# Our own "the platform took it", then WhatsApp's statuses, in the order they can only move.
RANKS = {"accepted": 1, "sent": 2, "delivered": 3, "read": 4, "failed": 5}
STATUSES = tuple(RANKS)
# As long as the conversation log that shows them.
RECEIPT_TTL_S = CONVERSATION_LOG_TTL_SECONDS
MAX_ERROR_TEXT = 300
# A status ahead of its send's recording waits this long (the race is of milliseconds; a wamid of
# another system on the same number is never recorded), and at most this many per wamid.
EARLY_STATUS_TTL_S = 120
EARLY_STATUS_MAX = 8

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

# KEYS[1] the receipt, KEYS[2] and KEYS[3] (optional) a wamid that names it and the statuses that
# came before it; ARGV: the status (JSON: status, rank, at, code, title, detail), ttl, RETENTION_DAYS
# in seconds, the message id (with KEYS[2]). Returns the statuses that had come early, applied now.
_RECORD = (
    _LEFT
    + """
local function apply(s)
  redis.call('HSET', KEYS[1], s.status .. '_at', s.at)
  if tonumber(s.rank) > tonumber(redis.call('HGET', KEYS[1], 'rank') or '0') then
    redis.call('HSET', KEYS[1], 'status', s.status, 'rank', s.rank)
  end
  if s.status == 'failed' then
    redis.call('HSET', KEYS[1], 'error_code', s.code, 'error_title', s.title, 'error_detail', s.detail)
  end
end
local ttl = left(KEYS[1], ARGV[2], ARGV[3])
if ttl == 0 then
  return {}
end
apply(cjson.decode(ARGV[1]))
local early = {}
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ttl)
  early = redis.call('LRANGE', KEYS[3], 0, -1)
  redis.call('DEL', KEYS[3])
  for _, raw in ipairs(early) do
    apply(cjson.decode(raw))
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
return early
"""
)

# KEYS[1] a wamid's pointer, KEYS[2] its early statuses; ARGV: the status (as _RECORD's), the TTL
# and the most kept. The message the wamid names, or nil with the status kept for its recording
# (one step: a recording between a look and a keep would never see it).
_MESSAGE_OR_WAIT = """
local message = redis.call('GET', KEYS[1])
if message then
  return message
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return false
"""

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

    def to_json(self) -> bytes:
        """As the scripts read it (the error's texts cut to MAX_ERROR_TEXT)."""
        failure = self.failure or Failure(0, "")
        return orjson.dumps(
            {
                "status": self.status,
                "rank": RANKS[self.status],
                "at": round(self.at_s, 3),
                "code": failure.code,
                "title": failure.title[:MAX_ERROR_TEXT],
                "detail": failure.detail[:MAX_ERROR_TEXT],
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> StatusUpdate:
        data = orjson.loads(raw)
        failure = Failure(int(data["code"]), str(data["title"]), str(data["detail"]))
        return cls(str(data["status"]), float(data["at"]), failure if data["status"] == "failed" else None)


@dataclass(frozen=True, slots=True)
class Receipts:
    redis: Redis
    names: Names
    # RETENTION_DAYS in seconds (Settings.retention_s): no receipt outlives it.
    retention_s: int

    async def record(self, message_id: str, update: StatusUpdate, wamid: str = "") -> list[StatusUpdate]:
        """Raises REDIS_ERRORS. `wamid`: the platform's id of the message, which its statuses name;
        returns the statuses of that wamid that had come before it, recorded now too."""
        keys = [self.names.receipt_key(message_id)]
        if wamid:
            keys += [self.names.wamid_key(wamid), self.names.early_statuses_key(wamid)]
        # EVALSHA: a status arrives for every message sent; the script's text need not travel each time.
        early = await self.redis.register_script(_RECORD)(
            keys=keys, args=[update.to_json(), RECEIPT_TTL_S, self.retention_s, message_id]
        )
        return [StatusUpdate.from_json(raw) for raw in early]

    async def accepted(self, message_id: str, at_s: float, wamid: str = "") -> list[StatusUpdate]:
        """The platform took (a part of) the message; `wamid` is its id, for WhatsApp. Returns the
        statuses of that wamid that came before this, recorded now too."""
        return await self.record(message_id, StatusUpdate("accepted", at_s), wamid)

    async def message_or_wait(self, wamid: str, update: StatusUpdate) -> str | None:
        """The message `wamid` names; None when no send recorded it yet, the status then kept for
        that recording (EARLY_STATUS_TTL_S). Raises REDIS_ERRORS."""
        keys = [self.names.wamid_key(wamid), self.names.early_statuses_key(wamid)]
        found = await self.redis.register_script(_MESSAGE_OR_WAIT)(
            keys=keys, args=[update.to_json(), EARLY_STATUS_TTL_S, EARLY_STATUS_MAX]
        )
        return None if found is None else str(found)

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


def count_status(metrics: DeliveryMetrics, message_id: str, update: StatusUpdate) -> None:
    """A WhatsApp status recorded on our message: counted, and a failure logged with its code."""
    metrics.statuses.labels("whatsapp", update.status).inc()
    if update.failure is not None:
        metrics.failures.labels("whatsapp", str(update.failure.code)).inc()
        log.warning("WhatsApp did not deliver %s: %s %s", message_id, update.failure.code, update.failure.title)


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
