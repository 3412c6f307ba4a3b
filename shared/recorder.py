"""Statistics that cost nothing per message: counted in the process, flushed to Redis in batches.

A process records into its `Recorder` (plain dictionary additions, no I/O) and the recorder's loop
sends everything recorded since the last flush about once a second (STATS_FLUSH_INTERVAL_SECONDS)
as one script call in one round trip, however many messages there were. What the monitor reads
(shared/stats.py, services/monitor/stats_reader.py) is unchanged: the same slice hashes, fields and
sorted sets; only when they are written changed.

What this costs in exactness, said plainly: a clean stop flushes what is left; a process killed
with SIGKILL (or the OOM killer) loses what it recorded since its last flush, about a second of
statistics. Messages are never lost with it: they are committed by their own script.

Counted once: every flush carries a token of its own, and the script applies a token only once
(`SET NX`), so a flush whose reply was lost and which is sent again (redis-py's retry, or the
next flush after an error) is not counted twice. A flush that fails is kept and sent again with
its token before anything newer; what is recorded meanwhile waits in the next batch.

Forgotten: an erasure (shared/privacy) runs in another process than the recorders, so a member of a
last-seen set (the users seen, the conversations' index) recorded just before it could be written
back by a flush just after. So an erasure also files the SHA-1 of each member it removes in the
namespace's forgotten set (`forget`), kept FORGET_KEEP_S; a flush drops a member filed there that it
saw before (or up to FORGET_MARGIN_S after, for clocks apart) the erasure. It costs one EXISTS a
flush while no erasure is recent.

Adding a statistic: call `count(field)` (a counter in the 10-second and hourly slices, `total=True`
for the all-time hash too), `observe(histogram, ms)` (a latency histogram, shared.stats buckets) or
`seen(key, member, keep_s)` (a sorted set of members by last time seen) from anywhere that holds
the process's recorder, then read the field back in services/monitor/stats_reader.py (`Window.add_slice`
merges every field of a slice). `expire(key, ttl_s)` renews the time to live of a key that many
messages write (the worker's memory and conversation logs): once a flush, however many there were.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from shared import stats
from shared.names import Names
from shared.store import REDIS_ERRORS

log = logging.getLogger(__name__)

# Long enough that no resend of a flush comes after its token expired.
FLUSH_TOKEN_TTL_SECONDS = 600
# An erased member is dropped from the flushes that come this long after the erasure, when they saw
# it before the erasure (plus the margin: the processes' clocks may be a little apart).
FORGET_KEEP_S = 3600
FORGET_MARGIN_S = 5.0
DEFAULT_INTERVAL_S = 1.0
FINAL_FLUSH_TIMEOUT_S = 5.0

# KEYS: 1 the flush's token, then the keys the payload names by index (1-based, after the token).
# ARGV: 1 the payload: {"hashes": [{"k", "ttl", "add", "sum", "max"}], "seen": [{"k", "members",
# "cutoff"}], "expire": [{"k", "ttl"}], "forgotten": k, "margin"}, 2 the token's ttl. Members are
# added 1000 a ZADD (score and member: 2000 arguments), within what Lua's unpack takes. Applies the
# batch once per token; returns 0 when the token was applied before.
_FLUSH = """#!lua
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
local p = cjson.decode(ARGV[1])
for _, h in ipairs(p.hashes) do
  local k = KEYS[h.k + 1]
  for name, n in pairs(h.add) do
    redis.call('HINCRBY', k, name, n)
  end
  for name, x in pairs(h.sum) do
    redis.call('HINCRBYFLOAT', k, name, x)
  end
  for name, x in pairs(h.max) do
    if tonumber(x) > tonumber(redis.call('HGET', k, name) or '0') then
      redis.call('HSET', k, name, x)
    end
  end
  if h.ttl > 0 then
    redis.call('EXPIRE', k, h.ttl)
  end
end
local forgotten = KEYS[p.forgotten + 1]
if redis.call('EXISTS', forgotten) == 0 then
  forgotten = nil
end
for _, s in ipairs(p.seen) do
  local k = KEYS[s.k + 1]
  local members = s.members
  if forgotten then
    members = {}
    for i = 1, #s.members, 2 do
      local gone = redis.call('ZSCORE', forgotten, redis.sha1hex(s.members[i + 1]))
      if not gone or tonumber(s.members[i]) > tonumber(gone) + p.margin then
        members[#members + 1] = s.members[i]
        members[#members + 1] = s.members[i + 1]
      end
    end
  end
  for i = 1, #members, 2000 do
    redis.call('ZADD', k, unpack(members, i, math.min(i + 1999, #members)))
  end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', s.cutoff)
end
for _, e in ipairs(p.expire) do
  redis.call('EXPIRE', KEYS[e.k + 1], e.ttl)
end
return 1
"""


@dataclass(slots=True)
class _Hash:
    """What a batch adds to one hash."""

    ttl: int
    add: Counter[str] = field(default_factory=Counter)
    sums: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Seen:
    """Members of one sorted set with the last time each was seen, and how long they are kept."""

    keep_s: float
    members: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Batch:
    hashes: dict[str, _Hash] = field(default_factory=dict)
    seen: dict[str, _Seen] = field(default_factory=dict)
    expires: dict[str, int] = field(default_factory=dict)  # key: its time to live, from the flush

    def __bool__(self) -> bool:
        return bool(self.hashes or self.seen or self.expires)

    def hash(self, key: str, ttl: int) -> _Hash:
        found = self.hashes.get(key)
        if found is None:
            found = self.hashes[key] = _Hash(ttl)
        return found

    def call(self, now: float, forgotten_key: str) -> tuple[list[str], bytes]:
        """The keys and payload of this batch's flush script call (token key first, added by the caller)."""
        keys = [*self.hashes, *self.seen, *self.expires, forgotten_key]
        hashes = [
            {
                "k": index + 1,
                "ttl": h.ttl,
                "add": dict(h.add),
                # As text, so no precision is lost on the way (the script adds or compares them).
                "sum": {name: repr(x) for name, x in h.sums.items()},
                "max": {name: repr(x) for name, x in h.maxima.items()},
            }
            for index, h in enumerate(self.hashes.values())
        ]
        seen = [
            {
                "k": len(self.hashes) + index + 1,
                "members": [item for member, at in s.members.items() for item in (repr(at), member)],
                "cutoff": repr(now - s.keep_s),
            }
            for index, s in enumerate(self.seen.values())
        ]
        first = len(self.hashes) + len(self.seen) + 1
        expire = [{"k": first + index, "ttl": ttl} for index, ttl in enumerate(self.expires.values())]
        payload = {"hashes": hashes, "seen": seen, "expire": expire, "forgotten": len(keys), "margin": FORGET_MARGIN_S}
        return keys, orjson.dumps(payload)


@dataclass(slots=True)
class Recorder:
    """Counters, histograms and last-seen sets of one process, flushed to Redis in batches."""

    redis: Redis
    names: Names
    clock: Callable[[], float] = time.time
    _batch: _Batch = field(default_factory=_Batch)
    # A batch sent but not known to have landed: (token, keys, payload), sent again first.
    _pending: tuple[str, list[str], bytes] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sha: str = ""
    # The slices' keys for the 10 seconds of `_slice_at` (a reply counts in them six times; they
    # change with the 10-second slice only, the hourly slice's boundaries being some of its own).
    _slice_at: int = -1
    _slice_keys: tuple[tuple[str, int], tuple[str, int]] = (("", 0), ("", 0))

    def __post_init__(self) -> None:
        self._sha = self.redis.register_script(_FLUSH).sha

    # Recording (no I/O) ------------------------------------------------------------------------
    def _slices(self, *, hourly: bool = True) -> list[_Hash]:
        """The 10-second and (`hourly`) the hourly slice of now."""
        now = self.clock()
        at = int(now // stats.FINE_SECONDS)
        if at != self._slice_at:
            self._slice_keys, self._slice_at = stats.slice_keys(self.names, now), at
        fine, hour = self._slice_keys
        return [self._batch.hash(key, ttl) for key, ttl in ((fine, hour) if hourly else (fine,))]

    def count(self, name: str, n: int = 1, *, total: bool = False, hourly: bool = True) -> None:
        """Add `n` to the field `name` of the current 10-second slice, of the hourly one (unless
        not `hourly`: a field read only over short windows) and of the all-time totals (`total`)."""
        for h in self._slices(hourly=hourly):
            h.add[name] += n
        if total:
            self._batch.hash(self.names.stats_total_key, 0).add[name] += n

    def observe(self, histogram: str, ms: float, *, hourly: bool = True) -> None:
        """File a latency under its bucket of the histogram `histogram` (shared.stats)."""
        self.count(f"{histogram}:{stats.bucket_of(ms)}", hourly=hourly)

    def add_float(self, name: str, value: float, *, keep_max: str = "") -> None:
        """Add `value` to the float field `name` of the current slices, and keep it in the field
        `keep_max` if it is the largest seen there."""
        for h in self._slices():
            h.sums[name] = h.sums.get(name, 0.0) + value
            if keep_max:
                h.maxima[keep_max] = max(h.maxima.get(keep_max, 0.0), value)

    def seen(self, key: str, member: str, keep_s: float) -> None:
        """`member` of the sorted set `key` was seen now; members not seen for `keep_s` are dropped."""
        entry = self._batch.seen.get(key)
        if entry is None:
            entry = self._batch.seen[key] = _Seen(keep_s)
        entry.members[member] = self.clock()

    def expire(self, key: str, ttl_s: int) -> None:
        """Set `key` to expire `ttl_s` after the next flush (if it exists then): a key written by
        many messages of a second has its time to live renewed once for them all."""
        self._batch.expires[key] = ttl_s

    def trim(self, key: str, keep_s: float) -> None:
        """Drop the members of the sorted set `key` older than `keep_s` with the next flush."""
        if key not in self._batch.seen:
            self._batch.seen[key] = _Seen(keep_s)

    def reply(self, counts: stats.ReplyCounts) -> None:
        """What one committed reply counts (the fields shared.stats.reply_counters names)."""
        for name, n in stats.reply_counters(counts).items():
            hourly = name.partition(":")[0] not in stats.FINE_ONLY
            self.count(name, n, total=name == stats.MESSAGES, hourly=hourly)
        self.add_float(stats.LATENCY_SUM, counts.end_to_end_ms, keep_max=stats.LATENCY_MAX)

    # Flushing ----------------------------------------------------------------------------------
    async def flush(self) -> bool:
        """Send what was recorded, in one round trip. False when Redis did not take it (it is kept
        and sent again, with its token, by the next flush)."""
        async with self._lock:
            try:
                if self._pending is not None:
                    await self._send(*self._pending)
                    self._pending = None
                if self._batch:
                    keys, payload = self._batch.call(self.clock(), self.names.forgotten_key)
                    self._pending = (uuid.uuid4().hex, keys, payload)
                    self._batch = _Batch()
                    await self._send(*self._pending)
                    self._pending = None
            except REDIS_ERRORS as exc:
                log.warning("statistics not flushed, kept for the next flush: %s", exc)
                return False
            return True

    async def _send(self, token: str, keys: list[str], payload: bytes) -> None:
        args: list[Any] = [self.names.stats_flush_key(token), *keys, payload, FLUSH_TOKEN_TTL_SECONDS]
        try:
            await self.redis.evalsha(self._sha, len(keys) + 1, *args)
        except NoScriptError:  # Redis restarted or flushed its scripts; the token keeps this once
            await self.redis.script_load(_FLUSH)
            await self.redis.evalsha(self._sha, len(keys) + 1, *args)

    async def run(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        """Flush every `interval_s` for as long as the process runs, and once more when stopped."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()
        finally:
            # Bounded: a stop must not wait out Redis's retries when it is gone.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINAL_FLUSH_TIMEOUT_S):
                    await self.flush()


async def forget(
    redis: Redis,
    names: Names,
    key: str,
    members: Iterable[str],
    now: float | None = None,
    *,
    delete: Iterable[str] = (),
) -> tuple[int, int]:
    """Remove `members` from the last-seen set `key` and file them as forgotten (see the module's
    docstring): a flush that saw them before now does not write them back. `delete`: keys deleted in
    the same transaction (a conversation's log with its entry in the index). Returns how many
    members were removed and how many keys deleted."""
    gone, doomed = list(members), list(delete)
    at = time.time() if now is None else now
    async with redis.pipeline(transaction=True) as pipe:
        if doomed:
            pipe.delete(*doomed)
        if gone:
            pipe.zrem(key, *gone)
            pipe.zadd(names.forgotten_key, {hashlib.sha1(m.encode()).hexdigest(): at for m in gone})
            pipe.zremrangebyscore(names.forgotten_key, "-inf", at - FORGET_KEEP_S)
            pipe.expire(names.forgotten_key, FORGET_KEEP_S)
        results = await pipe.execute() if doomed or gone else []
    deleted = int(results[0]) if doomed else 0
    removed = int(results[1 if doomed else 0]) if gone else 0
    return removed, deleted
