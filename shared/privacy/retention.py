"""RETENTION_DAYS: what customers wrote is kept no longer than that (docs/privacy.md).

Redis expires most of it by itself, sooner: a conversation log 7 days after its last message, an
unanswered question's hour 8 days after it, memory after MEMORY_TTL_SECONDS, a handoff after
HANDOFF_TTL_SECONDS, a stored reply after a day. What a TTL cannot bound is swept here, every
SWEEP_INTERVAL_S by one monitor at a time (a lock in Redis; the sweep is safe to repeat anyway):
  * the oldest entries of a conversation log that is still in use,
  * whole logs and unanswered-question hours older than the period (when it is shorter than their TTL),
  * questions operators handled and suggested phrasings (kept by date),
  * the comments customers left with a rating (one list whose expiry each new comment renews),
  * dead letters (RabbitMQ keeps them until someone acts).
Aggregated statistics hold no personal data and stay. A feature with records of its own adds a
`Sweep` to `Retention.extra`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import conversations, unanswered
from shared.broker import Broker
from shared.names import Names
from shared.privacy import deadletters, lock

log = logging.getLogger(__name__)

DAY_S = 86_400
SWEEP_INTERVAL_S = 3600.0
LOCK_S = 600
BATCH = 500

# A sweep of one kind of record: given the cutoff (epoch seconds), how many records it removed.
Sweep = Callable[[float], Awaitable[int]]

# KEYS: a conversation log. ARGV: the cutoff. Drops the entries older than it from the front.
_TRIM_LOG = """
local dropped = 0
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local ok, entry = pcall(cjson.decode, head)
  local at = ok and type(entry) == 'table' and tonumber(entry.replied_at or entry.accepted_at or entry.at)
  if at and at >= tonumber(ARGV[1]) then break end
  redis.call('LPOP', KEYS[1])
  dropped = dropped + 1
end
return dropped
"""


@dataclass(frozen=True, slots=True)
class Retention:
    redis: Redis
    names: Names
    broker: Broker | None
    days: int
    clock: Callable[[], float] = time.time
    extra: tuple[tuple[str, Sweep], ...] = ()

    @property
    def seconds(self) -> int:
        return self.days * DAY_S

    def cutoff(self) -> float:
        return self.clock() - self.seconds

    async def sweep(self) -> dict[str, int] | None:
        """One sweep of everything; None when another monitor holds the lock."""
        holder = await lock.try_lock(self.redis, self.names.retention_lock_key, LOCK_S)
        if holder is None:
            return None
        try:
            cutoff = self.cutoff()
            removed = {}
            for name, sweep in self._sweeps():
                removed[name] = await sweep(cutoff)
            return removed
        finally:
            await lock.release(self.redis, self.names.retention_lock_key, holder)

    def _sweeps(self) -> tuple[tuple[str, Sweep], ...]:
        sweeps: tuple[tuple[str, Sweep], ...] = (
            ("conversation_logs", self.conversation_logs),
            ("unanswered_questions", self.unanswered_questions),
            ("rating_comments", self.rating_comments),
        )
        if self.broker is not None:
            sweeps += (("dead_letters", self.dead_letters),)
        return sweeps + self.extra

    async def conversation_logs(self, cutoff: float) -> int:
        names = self.names
        idle = [str(c) for c in await self.redis.zrangebyscore(names.conversations_key, "-inf", f"({cutoff}")]
        removed = 0
        for start in range(0, len(idle), BATCH):
            batch = idle[start : start + BATCH]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(names.conversation_log_key(c) for c in batch))
                pipe.zrem(names.conversations_key, *batch)
                deleted, _ = await pipe.execute()
            removed += int(deleted)
        active = [str(c) for c in await self.redis.zrangebyscore(names.conversations_key, cutoff, "+inf")]
        trim = self.redis.register_script(_TRIM_LOG)
        for start in range(0, len(active), BATCH):
            async with self.redis.pipeline(transaction=False) as pipe:
                for conversation in active[start : start + BATCH]:
                    await trim(keys=[names.conversation_log_key(conversation)], args=[cutoff], client=pipe)
                removed += sum(int(n) for n in await pipe.execute())
        return removed

    async def unanswered_questions(self, cutoff: float) -> int:
        names = self.names
        first = int((self.clock() - unanswered.TTL_S) // unanswered.HOUR_S)
        last = int(cutoff // unanswered.HOUR_S)  # the hour the cutoff falls in still has younger ones
        hours = range(first, last)
        old_suggestions = await self.redis.zrangebyscore(names.kb_suggestions_key, "-inf", f"({cutoff}")
        async with self.redis.pipeline(transaction=True) as pipe:
            for hour in hours:
                pipe.delete(unanswered.counts_key(names, hour), unanswered.examples_key(names, hour))
            pipe.zremrangebyscore(names.unanswered_handled_key, "-inf", f"({cutoff}")
            if old_suggestions:
                pipe.zrem(names.kb_suggestions_key, *old_suggestions)
                pipe.hdel(names.kb_suggestion_examples_key, *old_suggestions)
                pipe.hdel(names.kb_suggestion_counts_key, *old_suggestions)
            results = await pipe.execute()
        return sum(int(n) for n in results[: len(hours) + 1]) + len(old_suggestions)

    async def rating_comments(self, cutoff: float) -> int:
        trim = self.redis.register_script(conversations.TRIM_COMMENTS)
        return int(await trim(keys=[conversations.Keys(self.names).comments], args=[cutoff]))

    async def dead_letters(self, cutoff: float) -> int:
        assert self.broker is not None

        def old(letter: deadletters.Letter) -> bool:
            return letter.died_at is not None and letter.died_at < cutoff

        return len(await deadletters.sweep(self.broker, self.redis, old))


async def run(retention: Retention, interval_s: float = SWEEP_INTERVAL_S) -> None:
    """The monitor's loop (shared.service.supervised restarts it after an error)."""
    if retention.broker is not None:
        await retention.broker.wait_ready()
    while True:
        removed = await retention.sweep()
        if removed:
            log.info("retention sweep: %s", removed, extra={"removed": removed})
        await asyncio.sleep(interval_s)
