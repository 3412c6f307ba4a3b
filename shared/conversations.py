"""Conversations as an owner counts them: started, how they ended, and how customers rated them.

A conversation starts with a customer's first message after the last one ended, and ends in one
outcome (`OUTCOMES`): the bot answered (`resolved`), answered after a question back
(`resolved_after_clarify`), a person was asked for (`handed_off`, counted when it happens), or the
customer left without an answer (`abandoned`). Who writes what:

- the worker's commit (services/worker/commit.py) runs `TRACK_LUA` inside its effects script, so a
  message costs no extra round trip and, mostly, two commands: the conversation's state (one
  field of the open hash: its replies, fallbacks, whether it asked back, answered or handed
  over), its quiet timer in a sorted set, a handoff, a rating (`csat:N`, recorded only when one
  was asked for) and the comment after it;
- the worker's sweeper (services/worker/csat.py) runs `_SWEEP`: it claims the conversations
  whose timer is due atomically (ZREM under a script: any number of workers), counts their outcome
  and, once in 24 hours, asks for a rating (CSAT_AFTER_MINUTES after the bot's last reply, or at
  once after an agent released the conversation);
- the admin area (services/monitor) marks a release (`released`) and an agent's first reply
  (`agent_replied`), and reads the day and hour counts (`read_days`, `read_hours`, `read_totals`).

Counts live in hashes per day (in BUSINESS_TIMEZONE, 32 days), per hour (49 hours, for the rolling
24 h of /monitoring/stats) and in a totals hash that never expires (Prometheus counters).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.hours import DEFAULT_TIMEZONE
from shared.names import Names
from shared.settings import Settings

OUTCOMES = ("resolved", "resolved_after_clarify", "handed_off", "abandoned")
HANDLERS = ("bot", "agent")
SCORES = range(1, 6)
# A score's option id: `csat:1` .. `csat:5` (offered by services/worker/csat.py).
RATING_OPTION_PREFIX = "csat:"
DAY_TTL_SECONDS = 32 * 86_400
HOUR_TTL_SECONDS = 49 * 3600
# With CSAT off, a conversation still ends after this much quiet (for its outcome).
DEFAULT_QUIET_SECONDS = 30 * 60
# A rating is asked at most once per conversation in this long, and may be given within it.
ASKED_TTL_SECONDS = 86_400
# After a rating, the customer's next message within this long is its comment.
COMMENT_TTL_SECONDS = 30 * 60
COMMENTS_KEPT = 1000
SWEEP_BATCH = 100


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    """CSAT_AFTER_MINUTES (0: no rating asked) and the time zone the days are counted in."""

    csat_after_s: int = 30 * 60
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))
    handoff_ttl_s: int = 4 * 3600

    @classmethod
    def from_settings(cls, settings: Settings) -> ConversationSettings:
        return cls(
            csat_after_s=settings.csat_after_minutes * 60,
            timezone=settings.business_hours.timezone,
            handoff_ttl_s=settings.handoff_ttl_s,
        )

    @property
    def quiet_s(self) -> int:
        return self.csat_after_s or DEFAULT_QUIET_SECONDS

    def day(self, at: float) -> str:
        return datetime.fromtimestamp(at, self.timezone).date().isoformat()


@dataclass(frozen=True, slots=True)
class Keys:
    """This feature's Redis keys, under the deployment's namespace."""

    names: Names

    @property
    def prefix(self) -> str:
        return f"{self.names.key_prefix}:conv"

    @property
    def open(self) -> str:
        """Hash: conversation id -> its state (JSON) while it has not ended."""
        return f"{self.prefix}:open"

    @property
    def due(self) -> str:
        """Sorted set: conversation id by when its quiet timer is due."""
        return f"{self.prefix}:due"

    def day(self, day: str) -> str:
        return f"{self.prefix}:day:{day}"

    def hour(self, at: float) -> str:
        return f"{self.prefix}:hour:{int(at // 3600) * 3600}"

    @property
    def totals(self) -> str:
        return f"{self.prefix}:total"

    @property
    def comments(self) -> str:
        """List of the ratings' comments, newest first (the last COMMENTS_KEPT, gone after 32 quiet
        days; each older than RETENTION_DAYS is dropped by the retention sweep, `TRIM_COMMENTS`)."""
        return f"{self.prefix}:csat:comments"

    @property
    def asked_prefix(self) -> str:
        return f"{self.prefix}:csat:asked:"

    @property
    def rating_prefix(self) -> str:
        """`{prefix}{conversation}`: a rating was asked, whoever handled it (bot or agent)."""
        return f"{self.prefix}:csat:open:"

    def tracked(self, conversation: str, at: float, day: str) -> list[str]:
        """The keys `TRACK_LUA` takes, in its order."""
        return [
            self.open,
            self.due,
            self.day(day),
            self.hour(at),
            self.totals,
            self.rating_prefix + conversation,
            self.comments,
        ]


# `track(K, c, t)`, run by the commit's effects for a standing reply that is not merged:
# K the keys of `Keys.tracked`; c what is the same whatever reply stands (`tracking`); t what the
# standing reply is (`reply_tracking`). Kept to two commands for most messages (read and write the
# conversation's state): a conversation's start adds its count and its quiet timer, which the
# sweep moves on while the conversation is not quiet yet (`last`), and its replies and fallbacks
# are counted once, when it ends. A rating closes its request and leaves a state waiting for the
# comment; the message after it is that comment. A score tapped that was not offered (asked again
# by the reply policy: tapped twice, or never asked) is neither a comment nor a conversation.
TRACK_LUA = """
local function hincr(keys, name, ttl)
  for _, k in ipairs(keys) do
    redis.call('HINCRBY', k, name, 1)
    redis.call('EXPIRE', k, ttl)
  end
end
local function rated(K, c, t)
  local by = redis.call('GET', K[6])
  if not by then
    return
  end
  redis.call('DEL', K[6])
  redis.call('HINCRBY', K[3], 'csat:' .. t.csat, 1)
  hincr({K[3]}, 'csat:' .. t.csat .. ':' .. by, c.day_ttl)
  redis.call('HINCRBY', K[5], 'csat:' .. t.csat .. ':' .. by, 1)
  if redis.call('HSETNX', K[1], c.id, cjson.encode({rated = {score = t.csat, by = by}})) == 1 then
    redis.call('ZADD', K[2], c.now + c.comment_ttl, c.id)
  end
end
local function track(K, c, t)
  if t.csat > 0 then
    return rated(K, c, t)
  end
  if t.silenced or c.score_tapped then
    return
  end
  local raw = redis.call('HGET', K[1], c.id)
  local st = raw and cjson.decode(raw)
  if st and st.rated then
    redis.call('LPUSH', K[7], cjson.encode({conversation = c.id, score = st.rated.score,
      handled_by = st.rated.by, text = c.text, at = c.now}))
    redis.call('LTRIM', K[7], 0, c.comments_kept - 1)
    redis.call('EXPIRE', K[7], c.day_ttl)
    redis.call('HDEL', K[1], c.id)
    return
  end
  if not st then
    st = {ch = c.channel, n = 0, fb = 0}
    hincr({K[3]}, 'started', c.day_ttl)
    hincr({K[4]}, 'started', c.hour_ttl)
    redis.call('ZADD', K[2], c.now + c.quiet, c.id)
  end
  st.n, st.last, st.addr = st.n + 1, c.now, c.addr
  if t.kind == 'fallback' then st.fb = st.fb + 1 end
  if t.kind == 'clarify' then st.clar = 1 end
  if t.kind == 'answer' then st.ans = 1 end
  if t.handoff and not st.handed then
    st.handed = 1
    hincr({K[3]}, 'outcome:handed_off', c.day_ttl)
    hincr({K[4]}, 'outcome:handed_off', c.hour_ttl)
    redis.call('HINCRBY', K[5], 'outcome:handed_off:' .. st.ch, 1)
    redis.call('ZADD', K[2], c.now + c.handoff_ttl, c.id)
  end
  redis.call('HSET', K[1], c.id, cjson.encode(st))
end
"""

# KEYS: the comments list. ARGV: the cutoff (epoch seconds). The customers' own words, so they age
# like the conversation logs (shared/privacy/retention.py): the comments older than the cutoff are
# dropped from the list's end, where the oldest are (LPUSH puts the newest first); one without a
# readable time goes too. Returns how many went.
TRIM_COMMENTS = """
local dropped = 0
while true do
  local tail = redis.call('LINDEX', KEYS[1], -1)
  if not tail then break end
  local ok, comment = pcall(cjson.decode, tail)
  local at = ok and type(comment) == 'table' and tonumber(comment.at)
  if at and at >= tonumber(ARGV[1]) then break end
  redis.call('RPOP', KEYS[1])
  dropped = dropped + 1
end
return dropped
"""

# KEYS: 1 due, 2 open, 3 today's day hash, 4 this hour's hash, 5 totals. ARGV[1]: `_sweep_args`.
# Claims the due conversations (ZREM inside the script: one claimant each, however many sweep).
# One with a handoff still alive (a person has it, or will at the next opening) is looked at again
# later; the others end: their outcome is counted (a handoff's was counted when it began) and a
# rating is asked (once in 24 hours) when the bot resolved it or an agent released it.
# Returns {conversation, handled_by, address} for each rating to ask.
# The handoff and CSAT keys are built here from their prefixes: Redis here is one primary (or
# Sentinel's), never a cluster, so keys need not be declared to route.
_SWEEP = """
local a = cjson.decode(ARGV[1])
local function add(name, n)
  redis.call('HINCRBY', KEYS[3], name, n)
  redis.call('HINCRBY', KEYS[4], name, n)
end
local function ended(id, st)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HINCRBY', KEYS[3], 'replies', st.n)
  redis.call('HINCRBY', KEYS[3], 'fallbacks', st.fb)
  if st.handed then
    return st.released and 'agent'
  end
  local outcome = 'abandoned'
  if st.ans then
    outcome = st.clar and 'resolved_after_clarify' or 'resolved'
    add('contained', 1)
  end
  add('outcome:' .. outcome, 1)
  redis.call('HINCRBY', KEYS[5], 'outcome:' .. outcome .. ':' .. st.ch, 1)
  return st.ans and 'bot'
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', a.now, 'LIMIT', 0, a.limit)
local asks = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local raw = redis.call('HGET', KEYS[2], id)
  local st = raw and cjson.decode(raw)
  if not st then
    -- ended already (a copy of its timer)
  elseif st.rated then
    redis.call('HDEL', KEYS[2], id)
  elseif redis.call('EXISTS', a.handoff_prefix .. id) == 1 then
    redis.call('ZADD', KEYS[1], a.now + a.quiet, id)
  elseif not st.handed and st.last + a.quiet > a.now then
    redis.call('ZADD', KEYS[1], st.last + a.quiet, id)
  else
    local by = ended(id, st)
    if by and a.csat and redis.call('SET', a.asked_prefix .. id, '1', 'NX', 'EX', a.asked_ttl) then
      redis.call('SET', a.rating_prefix .. id, by, 'EX', a.asked_ttl)
      table.insert(asks, {id, by, cjson.encode(st.addr)})
    end
  end
end
if #due > 0 then
  redis.call('EXPIRE', KEYS[3], a.day_ttl)
  redis.call('EXPIRE', KEYS[4], a.hour_ttl)
end
return asks
"""

# KEYS: 1 open, 2 due. ARGV: conversation, now. An agent gave the conversation back: it ends now
# (the sweeper asks for the agent's rating); 0 when it is not tracked (nothing to rate).
_RELEASED = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local st = cjson.decode(raw)
st.released = 1
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: 1 open, 2 day hash. ARGV: conversation, seconds since the handoff, day ttl. An agent's
# first reply after a handoff adds its wait to the day's first-response time.
_AGENT_REPLIED = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local st = cjson.decode(raw)
if not st.handed or st.agent then
  return 0
end
st.agent = 1
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
redis.call('HINCRBYFLOAT', KEYS[2], 'first_response_s', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'first_responses', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


def tracking(
    settings: ConversationSettings,
    conversation: str,
    address: dict[str, Any],
    text: str,
    now: float,
    *,
    option: str = "",
) -> dict[str, Any]:
    """`c` of `TRACK_LUA`: what does not depend on which reply stands (`option`: the id the
    customer's message chose, if any)."""
    return {
        "id": conversation,
        "channel": address["channel"],
        "addr": address,
        "text": text,
        "score_tapped": option.startswith(RATING_OPTION_PREFIX),
        "now": now,
        "quiet": settings.quiet_s,
        "handoff_ttl": settings.handoff_ttl_s,
        "day_ttl": DAY_TTL_SECONDS,
        "hour_ttl": HOUR_TTL_SECONDS,
        "comment_ttl": COMMENT_TTL_SECONDS,
        "comments_kept": COMMENTS_KEPT,
    }


def reply_tracking(kind: str, *, handoff: bool, silenced: bool, csat: int) -> dict[str, Any]:
    """`t` of `TRACK_LUA`: what the standing reply is."""
    return {"kind": kind, "handoff": handoff, "silenced": silenced, "csat": csat}


@dataclass(frozen=True, slots=True)
class RatingAsk:
    """A conversation that ended and is to be asked for a rating, and where to send the question."""

    conversation_id: str
    handled_by: str
    address: dict[str, Any]


@dataclass(slots=True)
class Conversations:
    """The sweep, the admin's marks and the reads, on one Redis."""

    redis: Redis
    names: Names
    settings: ConversationSettings = field(default_factory=ConversationSettings)
    clock: Callable[[], float] = time.time
    keys: Keys = field(init=False)
    _sweep: AsyncScript = field(init=False)
    _released: AsyncScript = field(init=False)
    _agent_replied: AsyncScript = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys(self.names)
        self._sweep = self.redis.register_script(_SWEEP)
        self._released = self.redis.register_script(_RELEASED)
        self._agent_replied = self.redis.register_script(_AGENT_REPLIED)

    async def sweep(self, limit: int = SWEEP_BATCH) -> list[RatingAsk]:
        """End the conversations whose quiet timer is due; the ratings to ask (raises REDIS_ERRORS)."""
        now, keys = self.clock(), self.keys
        args = {
            "now": now,
            "limit": limit,
            "csat": self.settings.csat_after_s > 0,
            "quiet": self.settings.quiet_s,
            "handoff_prefix": self.names.handoff_key(""),
            "asked_prefix": keys.asked_prefix,
            "rating_prefix": keys.rating_prefix,
            "asked_ttl": ASKED_TTL_SECONDS,
            "day_ttl": DAY_TTL_SECONDS,
            "hour_ttl": HOUR_TTL_SECONDS,
        }
        day = keys.day(self.settings.day(now))
        asks = await self._sweep([keys.due, keys.open, day, keys.hour(now), keys.totals], [orjson.dumps(args)])
        return [RatingAsk(_text(c), _text(by), orjson.loads(addr)) for c, by, addr in asks]

    async def released(self, conversation_id: str) -> bool:
        """An agent gave the conversation back: it ends now, and the agent's work is rated."""
        return bool(await self._released([self.keys.open, self.keys.due], [conversation_id, self.clock()]))

    async def agent_replied(self, conversation_id: str, since: float) -> bool:
        """An agent wrote; the first time after the handoff (begun at `since`) counts its wait."""
        now = self.clock()
        day = self.keys.day(self.settings.day(now))
        waited = max(0.0, now - since)
        return bool(await self._agent_replied([self.keys.open, day], [conversation_id, waited, DAY_TTL_SECONDS]))

    async def read_days(self, days: int) -> list[tuple[str, dict[str, float]]]:
        """The counts of the last `days` days (today last), by day."""
        today = datetime.fromtimestamp(self.clock(), self.settings.timezone).date()
        wanted = [(today - timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]
        return list(zip(wanted, await self._hashes([self.keys.day(day) for day in wanted]), strict=True))

    async def read_hours(self, hours: int) -> list[dict[str, float]]:
        """The counts of the last `hours` hours (the current one included)."""
        now = self.clock()
        return await self._hashes([self.keys.hour(now - back * 3600) for back in range(hours)])

    async def read_comments(self, limit: int) -> list[dict[str, Any]]:
        """The latest ratings' comments, newest first: conversation, score, handled_by, text, at."""
        return [orjson.loads(raw) for raw in await self.redis.lrange(self.keys.comments, 0, limit - 1)]

    async def read_totals(self) -> dict[str, float]:
        return (await self._hashes([self.keys.totals]))[0]

    async def _hashes(self, keys: list[str]) -> list[dict[str, float]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            raws = await pipe.execute()
        return [{_text(k): float(v) for k, v in raw.items()} for raw in raws]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
