"""The questions the bot could not answer, for the people who improve the knowledge base.

The worker records, after a reply is committed, every question whose reply was
  * `fallback`:        the base's "not found" reply,
  * `low_confidence`:  an answer from an entry scoring under LOW_CONFIDENCE,
  * `handoff`:         a fallback one too many in a row, so the conversation went to a human.
The admin area reads them back over the last 24 hours and 7 days, grouped by the normalised
question ("Vocês vendem Bitcoin??" and "voces vendem bitcoin" are one row) with counts and an
example as the customer wrote it.

Memory is bounded: one Redis hash per hour (`normalised kind` -> count, and -> first example),
at most MAX_QUESTIONS_PER_HOUR distinct questions each (the rest are counted as one "other"
row), every key expiring after TTL_S (8 days). Recording never fails a message: a Redis error
only logs a warning.
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

KINDS = ("fallback", "low_confidence", "handoff")
# An answer under this confidence is worth a look (the kb engine answers from 0.31 up).
LOW_CONFIDENCE = 0.45
HOUR_S = 3600
DAY_HOURS = 24
WEEK_HOURS = 7 * 24
TTL_S = 8 * 86_400
MAX_QUESTIONS_PER_HOUR = 500
QUESTION_MAX = 200  # characters kept of the normalised question
EXAMPLE_MAX = 300  # characters kept of the customer's words
OTHER = "\u2026"  # the row counting what an hour's cap left out
_SEPARATOR = "\x1f"

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


def kind_of(answered: Answered) -> str | None:
    """Which kind of unanswered question this reply makes, or None when it answered."""
    if answered.silenced:
        return None
    if answered.generated.fallback:
        return "handoff" if answered.sent.handoff else "fallback"
    if answered.generated.sources and answered.generated.confidence < LOW_CONFIDENCE:
        return "low_confidence"
    return None


def normalise(text: str) -> str:
    """Lower case, no accents, letters and digits only, single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c if c.isalnum() else " " for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.split())[:QUESTION_MAX]


def counts_key(names: Names, hour: int) -> str:
    return f"{names.namespace}:unanswered:{hour}:counts"


def examples_key(names: Names, hour: int) -> str:
    return f"{names.namespace}:unanswered:{hour}:examples"


async def record(redis: Redis, names: Names, replies: Sequence[Answered], now: float | None = None) -> None:
    """The entry point for the worker: call once per committed batch; one round trip, and none at
    all (nor any other work) for the common batch whose replies all answered."""
    entries = []
    for answered in replies:
        kind = kind_of(answered)
        question = normalise(answered.question) if kind is not None else ""
        if question:
            entries.append((f"{question}{_SEPARATOR}{kind}", answered.question.strip(), f"{OTHER}{_SEPARATOR}{kind}"))
    if not entries:
        return
    hour = int((time.time() if now is None else now) // HOUR_S)
    keys = [counts_key(names, hour), examples_key(names, hour)]
    script = redis.register_script(_RECORD)
    pipe = redis.pipeline(transaction=False)
    for key, example, other in entries:
        await script(keys=keys, args=[key, example[:EXAMPLE_MAX], TTL_S, MAX_QUESTIONS_PER_HOUR, other], client=pipe)
    try:
        await pipe.execute()
    except (*REDIS_ERRORS, RedisError) as exc:  # after the reply went out: nothing to undo or retry
        log.warning("unanswered questions not recorded (%d): %s", len(entries), exc)


async def report(redis: Redis, names: Names, now: float | None = None, limit: int = 200) -> list[Row]:
    """The questions of the last 7 days, most frequent first (then the most recent)."""
    current = int((time.time() if now is None else now) // HOUR_S)
    hours = [current - back for back in range(WEEK_HOURS)]
    pipe = redis.pipeline(transaction=False)
    for hour in hours:
        pipe.hgetall(counts_key(names, hour))
        pipe.hgetall(examples_key(names, hour))
    answers = await pipe.execute()
    rows: dict[str, Row] = {}
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for back, hour in enumerate(hours):
        counts, examples = answers[2 * back], answers[2 * back + 1]
        for key, value in counts.items():
            question, _, kind = _text(key).partition(_SEPARATOR)
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
