"""What the owner asks first, read back: conversations, how they ended, ratings (shared/conversations.py).

- `stats_block`: the `conversations` object of /monitoring/stats (SPEC section 5), rolling 24 hours
  from the hourly counts and 7 days from the daily ones;
- `report`: the admin area's outcomes page, per day for 30 days and over 7 and 30 days;
- `OutcomeCollector`: the Prometheus counters `atendimento_conversations_total{outcome,channel}`
  and `atendimento_csat_responses_total{score,handled_by}`, from the totals hash, which only
  grows; `run` reads it every ALERT_INTERVAL_SECONDS (a scrape never waits on Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.monitor.problems import unreachable
from shared.conversations import HANDLERS, OUTCOMES, SCORES, Conversations
from shared.messages import CHANNELS
from shared.store import REDIS_ERRORS

REFRESH_S = 15.0
COMMENTS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Summary:
    """What the admin area and /monitoring/stats show of a span of days or hours."""

    conversations: int = 0
    contained: int = 0
    handed_off: int = 0
    abandoned: int = 0
    resolved_after_clarify: int = 0
    replies: int = 0
    fallbacks: int = 0
    csat: dict[int, int] = field(default_factory=dict)
    first_response_s: float = 0.0
    first_responses: int = 0

    @property
    def csat_responses(self) -> int:
        return sum(self.csat.values())

    @property
    def csat_avg(self) -> float | None:
        total = self.csat_responses
        return round(sum(score * n for score, n in self.csat.items()) / total, 2) if total else None

    @property
    def fallback_rate(self) -> float | None:
        return round(self.fallbacks / self.replies, 4) if self.replies else None

    @property
    def first_response_avg_s(self) -> float | None:
        return round(self.first_response_s / self.first_responses, 1) if self.first_responses else None


def summarise(counts: list[dict[str, float]]) -> Summary:
    """Counts of several days or hours added up."""
    added: dict[str, float] = {}
    for one in counts:
        for name, value in one.items():
            added[name] = added.get(name, 0.0) + value

    def whole(name: str) -> int:
        return int(added.get(name, 0))

    return Summary(
        conversations=whole("started"),
        contained=whole("contained"),
        handed_off=whole("outcome:handed_off"),
        abandoned=whole("outcome:abandoned"),
        resolved_after_clarify=whole("outcome:resolved_after_clarify"),
        replies=whole("replies"),
        fallbacks=whole("fallbacks"),
        csat={score: whole(f"csat:{score}") for score in SCORES},
        first_response_s=added.get("first_response_s", 0.0),
        first_responses=whole("first_responses"),
    )


class ConversationStats(TypedDict):
    started_24h: int
    contained_24h: int
    handed_off_24h: int
    csat_avg_7d: float | None
    csat_responses_7d: int


async def stats_block(conversations: Conversations) -> ConversationStats | None:
    """/monitoring/stats `conversations`; None while Redis cannot be read."""
    try:
        hours = summarise(await conversations.read_hours(24))
        week = summarise([counts for _, counts in await conversations.read_days(7)])
    except REDIS_ERRORS:
        return None
    return {
        "started_24h": hours.conversations,
        "contained_24h": hours.contained,
        "handed_off_24h": hours.handed_off,
        "csat_avg_7d": week.csat_avg,
        "csat_responses_7d": week.csat_responses,
    }


@dataclass(frozen=True, slots=True)
class Report:
    """The outcomes page: the last 30 days, newest first, and the 7- and 30-day sums."""

    days: list[tuple[str, Summary]]
    week: Summary
    month: Summary
    comments: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": [{"day": day, **_summary_dict(summary)} for day, summary in self.days],
            "last_7_days": _summary_dict(self.week),
            "last_30_days": _summary_dict(self.month),
            "comments": self.comments,
        }


async def checked_report(conversations: Conversations) -> Report:
    """The report for a request: Redis down is a 503 naming it."""
    try:
        return await report(conversations)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the outcomes cannot be read") from None


async def report(conversations: Conversations) -> Report:
    """Raises REDIS_ERRORS."""
    counted = await conversations.read_days(30)  # oldest first
    days = [(day, summarise([counts])) for day, counts in reversed(counted)]
    every = [counts for _, counts in counted]
    comments = await conversations.read_comments(COMMENTS_SHOWN)
    return Report(days=days, week=summarise(every[-7:]), month=summarise(every), comments=comments)


def _summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        "conversations": summary.conversations,
        "contained": summary.contained,
        "resolved_after_clarify": summary.resolved_after_clarify,
        "handed_off": summary.handed_off,
        "abandoned": summary.abandoned,
        "fallback_rate": summary.fallback_rate,
        "csat_avg": summary.csat_avg,
        "csat_responses": summary.csat_responses,
        "csat_distribution": {str(score): summary.csat.get(score, 0) for score in SCORES},
        "first_response_avg_s": summary.first_response_avg_s,
    }


class OutcomeCollector(Collector):
    """The two counters, from the totals last read (none before the first read)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] | None = None

    async def run(self, conversations: Conversations, interval_s: float = REFRESH_S) -> None:
        while True:
            # Redis down: the counters keep their last values (Redis down is an alert of its own).
            with contextlib.suppress(*REDIS_ERRORS):
                self.totals = await conversations.read_totals()
            await asyncio.sleep(interval_s)

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self.totals
        if totals is None:
            return
        ended = CounterMetricFamily(
            "atendimento_conversations", "Conversations ended, by outcome and channel", labels=["outcome", "channel"]
        )
        for outcome in OUTCOMES:
            for channel in CHANNELS:
                ended.add_metric([outcome, channel], totals.get(f"outcome:{outcome}:{channel}", 0.0))
        yield ended
        rated = CounterMetricFamily(
            "atendimento_csat_responses",
            "Satisfaction ratings given, by score and who handled the conversation",
            labels=["score", "handled_by"],
        )
        for score in SCORES:
            for handler in HANDLERS:
                rated.add_metric([str(score), handler], totals.get(f"csat:{score}:{handler}", 0.0))
        yield rated
