"""The questions the bot could not answer, for the people who improve the knowledge base.

The worker records, after a reply is committed, every question whose reply was
  * `fallback`:        the base's "not found" reply,
  * `clarify`:         a question back: the bot was not sure which entry was meant,
  * `handoff`:         a fallback one too many in a row, so the conversation went to a human.
The admin area reads them back over the last 24 hours and 7 days, grouped by the normalised
question ("Vocês vendem Bitcoin??" and "voces vendem bitcoin" are one row) with counts and an
example as the customer wrote it.

Memory is bounded: one Redis hash per hour (`normalised kind` -> count, and -> first example),
at most MAX_QUESTIONS_PER_HOUR distinct questions each (the rest are counted as one "other"
row), every key expiring after TTL_S (8 days). Recording never fails a message: a Redis error
only logs a warning.

It also records suggested phrasings: a customer whose question got a question back and who then
chose an entry (the committed answer's `resolves` is their question) says in their own words what
that entry answers. They are kept by (entry, normalised question), with a count and the latest
example, at most MAX_SUGGESTIONS, each forgotten TTL_S after it was last made; an operator accepts
one (shared/phrasings.py) or dismisses it, nothing is applied without a person.

A question or suggestion an operator acted on ("this meant entry X", "out of scope", accepted,
dismissed) is marked handled and no longer listed; the marks are bounded (the newest MAX_HANDLED,
none older than HANDLED_KEEP_S).
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.messages import ReplyContent
from shared.names import Names
from shared.store import REDIS_ERRORS

log = logging.getLogger(__name__)

KINDS = ("fallback", "clarify", "handoff")
# The engines of the reply policy's own questions back (services/worker/engines/policy.py: a stale
# choice asked again; engines/privacy.py `ASKED`: an erasure's confirmation), never listed.
POLICY_QUESTIONS = frozenset({"choice", "privacy"})
HOUR_S = 3600
DAY_HOURS = 24
WEEK_HOURS = 7 * 24
TTL_S = 8 * 86_400
MAX_QUESTIONS_PER_HOUR = 500
QUESTION_MAX = 200  # characters kept of the normalised question
EXAMPLE_MAX = 300  # characters kept of the customer's words
OTHER = "\u2026"  # the row counting what an hour's cap left out
MAX_SUGGESTIONS = 1000
MAX_HANDLED = 10_000
HANDLED_KEEP_S = 90 * 86_400
# Between a question and its kind (and an entry id and a question): shared/privacy/owners.py reads it too.
SEPARATOR = "\x1f"
_SEPARATOR = SEPARATOR
# Handled marks: a listed question, or a suggestion (its field).
_QUESTION = "q" + _SEPARATOR
_SUGGESTED = "s" + _SEPARATOR

# KEYS: counts hash, examples hash. ARGV: field, example, ttl, cap, other field.
_RECORD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  redis.call('HINCRBY', KEYS[1], ARGV[5], 1)
else
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: suggestions (sorted by last made), examples hash, counts hash, handled marks.
# ARGV: field, example, now, cutoff (older is forgotten), cap, ttl, handled mark.
_SUGGEST = """
if redis.call('ZSCORE', KEYS[4], ARGV[7]) then return 0 end
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
for _, stale in ipairs(old) do
  redis.call('HDEL', KEYS[2], stale)
  redis.call('HDEL', KEYS[3], stale)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Answered:
    """One committed reply, as the recorder needs it."""

    question: str  # the customer's words
    generated: ReplyContent  # what the engine produced
    sent: ReplyContent  # what was committed (the escalation when the fallback was one too many)
    silenced: bool = False  # a human had the conversation: the bot's reply was never shown


@dataclass(slots=True)
class Row:
    question: str  # normalised
    example: str
    last_24h: int = 0
    last_7d: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # kind -> count over 7 days
    last_seen: float = 0.0  # start of the last hour it was seen in


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A customer's question that, once asked back, they said entry `entry_id` answers."""

    entry_id: str
    question: str  # normalised
    example: str  # as the customer last wrote it
    count: int
    last_seen: float


def kind_of(answered: Answered) -> str | None:
    """Which kind of unanswered question this reply makes, or None when it answered."""
    if answered.silenced:
        return None
    if answered.generated.fallback:
        return "handoff" if answered.sent.handoff else "fallback"
    # A question back the engine asked: not the reply policy's own ("please choose again" after a
    # stale choice, or the confirmation of an erasure the customer asked for: not for the base).
    if answered.generated.kind == "clarify" and answered.generated.engine not in POLICY_QUESTIONS:
        return "clarify"
    return None


def normalise(text: str) -> str:
    """Lower case, no accents, letters and digits only, single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c if c.isalnum() else " " for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.split())[:QUESTION_MAX]


def counts_key(names: Names, hour: int) -> str:
    return f"{names.key_prefix}:unanswered:{hour}:counts"


def examples_key(names: Names, hour: int) -> str:
    return f"{names.key_prefix}:unanswered:{hour}:examples"


def suggestion_of(answered: Answered) -> tuple[str, str] | None:
    """(entry id, the customer's question) when this answer resolved a question back, else None."""
    generated = answered.generated
    if answered.silenced or not generated.resolves.strip() or not generated.sources:
        return None
    return generated.sources[0], generated.resolves.strip()


async def record(redis: Redis, names: Names, replies: Sequence[Answered], now: float | None = None) -> None:
    """The entry point for the worker: call once per committed batch; one round trip, and none at
    all (nor any other work) for the common batch whose replies all answered."""
    entries = []
    suggestions = []
    for answered in replies:
        kind = kind_of(answered)
        question = normalise(answered.question) if kind is not None else ""
        if question:
            entries.append((f"{question}{_SEPARATOR}{kind}", answered.question.strip(), f"{OTHER}{_SEPARATOR}{kind}"))
        suggested = suggestion_of(answered)
        if suggested is not None and normalise(suggested[1]):
            suggestions.append(suggested)
    if not entries and not suggestions:
        return
    at = time.time() if now is None else now
    hour = int(at // HOUR_S)
    keys = [counts_key(names, hour), examples_key(names, hour)]
    script = redis.register_script(_RECORD)
    suggest = redis.register_script(_SUGGEST)
    pipe = redis.pipeline(transaction=False)
    for key, example, other in entries:
        await script(keys=keys, args=[key, example[:EXAMPLE_MAX], TTL_S, MAX_QUESTIONS_PER_HOUR, other], client=pipe)
    for entry_id, example in suggestions:
        field = suggestion_field(entry_id, normalise(example))
        mark = _SUGGESTED + field
        args: list[str | float] = [field, example[:EXAMPLE_MAX], at, at - TTL_S, MAX_SUGGESTIONS, TTL_S, mark]
        await suggest(keys=_suggestion_keys(names), args=args, client=pipe)
    try:
        await pipe.execute()
    except (*REDIS_ERRORS, RedisError) as exc:  # after the reply went out: nothing to undo or retry
        log.warning("unanswered questions not recorded (%d): %s", len(entries) + len(suggestions), exc)


async def report(redis: Redis, names: Names, now: float | None = None, limit: int = 200) -> list[Row]:
    """The questions of the last 7 days, most frequent first (then the most recent)."""
    current = int((time.time() if now is None else now) // HOUR_S)
    hours = [current - back for back in range(WEEK_HOURS)]
    pipe = redis.pipeline(transaction=False)
    for hour in hours:
        pipe.hgetall(counts_key(names, hour))
        pipe.hgetall(examples_key(names, hour))
    pipe.zrange(names.unanswered_handled_key, 0, -1)
    *answers, handled_marks = await pipe.execute()
    handled = {_text(mark)[len(_QUESTION) :] for mark in handled_marks if _text(mark).startswith(_QUESTION)}
    rows: dict[str, Row] = {}
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for back, hour in enumerate(hours):
        counts, examples = answers[2 * back], answers[2 * back + 1]
        for key, value in counts.items():
            question, _, kind = _text(key).partition(_SEPARATOR)
            if question in handled:
                continue
            count = int(value)
            row = rows.get(question)
            if row is None:
                row = rows[question] = Row(question, _text(examples.get(key, b"")) or question)
            elif not row.example or row.example == question:
                row.example = _text(examples.get(key, b"")) or row.example
            row.last_7d += count
            row.last_24h += count if back < DAY_HOURS else 0
            row.last_seen = max(row.last_seen, float(hour * HOUR_S))
            if kind in kinds[question]:
                kinds[question][kind] += count
    for question, row in rows.items():
        row.kinds = kinds[question]
    ordered = sorted(rows.values(), key=lambda r: (-r.last_7d, -r.last_24h, -r.last_seen, r.question))
    return ordered[:limit]


async def example_of(redis: Redis, names: Names, question: str, now: float | None = None) -> str | None:
    """The customer's words of a listed question (normalised, as `report` gives it), or None."""
    for row in await report(redis, names, now, limit=WEEK_HOURS * MAX_QUESTIONS_PER_HOUR):
        if row.question == question and question != OTHER:
            return row.example
    return None


async def mark_handled(redis: Redis, names: Names, question: str, now: float | None = None) -> None:
    """An operator acted on this question: it is not listed again."""
    await _mark(redis, names, _QUESTION + question, time.time() if now is None else now)


async def suggestions(redis: Redis, names: Names, now: float | None = None, limit: int = 200) -> list[Suggestion]:
    """The suggested phrasings of the last TTL_S, the most often made first (then the most recent)."""
    cutoff = (time.time() if now is None else now) - TTL_S
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrangebyscore(names.kb_suggestions_key, cutoff, "+inf", withscores=True)
        pipe.hgetall(names.kb_suggestion_examples_key)
        pipe.hgetall(names.kb_suggestion_counts_key)
        made, examples, counts = await pipe.execute()
    found = []
    for raw_field, score in made:
        entry_id, _, question = _text(raw_field).rpartition(_SEPARATOR)
        example = _text(examples.get(raw_field, b"")) or question
        found.append(Suggestion(entry_id, question, example, int(counts.get(raw_field, 1)), float(score)))
    found.sort(key=lambda s: (-s.count, -s.last_seen, s.entry_id, s.question))
    return found[:limit]


async def find_suggestion(redis: Redis, names: Names, entry_id: str, question: str) -> Suggestion | None:
    return next(
        (
            s
            for s in await suggestions(redis, names, limit=MAX_SUGGESTIONS)
            if (s.entry_id, s.question) == (entry_id, question)
        ),
        None,
    )


async def forget_suggestion(redis: Redis, names: Names, entry_id: str, question: str, now: float | None = None) -> bool:
    """Accepted or dismissed: gone from the list, and never suggested again. False when it was not there."""
    field = suggestion_field(entry_id, question)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(names.kb_suggestions_key, field)
        pipe.hdel(names.kb_suggestion_examples_key, field)
        pipe.hdel(names.kb_suggestion_counts_key, field)
        removed, _, _ = await pipe.execute()
    await _mark(redis, names, _SUGGESTED + field, time.time() if now is None else now)
    return bool(removed)


def suggestion_field(entry_id: str, question: str) -> str:
    return f"{entry_id}{_SEPARATOR}{question}"


def _suggestion_keys(names: Names) -> list[str]:
    return [
        names.kb_suggestions_key,
        names.kb_suggestion_examples_key,
        names.kb_suggestion_counts_key,
        names.unanswered_handled_key,
    ]


async def _mark(redis: Redis, names: Names, mark: str, now: float) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(names.unanswered_handled_key, {mark: now})
        pipe.zremrangebyscore(names.unanswered_handled_key, "-inf", now - HANDLED_KEEP_S)
        pipe.zremrangebyrank(names.unanswered_handled_key, 0, -MAX_HANDLED - 1)
        await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
