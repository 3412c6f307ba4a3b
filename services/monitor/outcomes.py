"""What the owner asks first, read back: conversations, how they ended, ratings (shared/conversations.py).

- `stats_block`: the `conversations` object of /monitoring/stats (SPEC section 5), rolling 24 hours
  from the hourly counts and 7 days from the daily ones;
- `report`: the admin area's outcomes page, per day for 30 days and over 7 and 30 days;
- `OutcomeCollector`: the Prometheus counters `atendimento_conversations_total{outcome,channel}`
  and `atendimento_csat_responses_total{score,handled_by}`, from the totals hash, which only
  grows; `refresh` reads it (a scrape must not wait on Redis), the monitor's loop calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.monitor.problems import unreachable
from shared.conversations import HANDLERS, OUTCOMES, SCORES, Conversations, Summary, summarise
from shared.messages import CHANNELS
from shared.store import REDIS_ERRORS

REFRESH_S = 15.0


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": [{"day": day, **_summary_dict(summary)} for day, summary in self.days],
            "last_7_days": _summary_dict(self.week),
            "last_30_days": _summary_dict(self.month),
        }


async def checked_report(conversations: Conversations) -> Report:
    """The report for a request: Redis down is a 503 naming it."""
    try:
        return await report(conversations)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the outcomes cannot be read") from None


async def report(conversations: Conversations) -> Report:
    """Raises REDIS_ERRORS."""
    days = [(day, summarise([counts])) for day, counts in await conversations.read_days(30)]
    days.reverse()
    return Report(
        days=days,
        week=summarise_days(days[:7]),
        month=summarise_days(days),
    )


def summarise_days(days: list[tuple[str, Summary]]) -> Summary:
    return Summary(
        conversations=sum(s.conversations for _, s in days),
        contained=sum(s.contained for _, s in days),
        handed_off=sum(s.handed_off for _, s in days),
        abandoned=sum(s.abandoned for _, s in days),
        resolved_after_clarify=sum(s.resolved_after_clarify for _, s in days),
        replies=sum(s.replies for _, s in days),
        fallbacks=sum(s.fallbacks for _, s in days),
        csat={score: sum(s.csat.get(score, 0) for _, s in days) for score in SCORES},
        first_response_s=sum(s.first_response_s for _, s in days),
        first_responses=sum(s.first_responses for _, s in days),
    )


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
