"""Reading the statistics the workers wrote: windows of slices, merged.

A read touches a fixed number of keys for its window (31 ten-second slices, 24 hourly slices, the
totals hash, two sorted-set counts), whatever the traffic was: counters and histogram buckets are
summed, never individual messages.

Windows roll: "last 5 minutes" is the 10-second slices that overlap it, "last 24 hours" the hourly
slices from 23 hours before the current one. Only "today" (the users and counts since midnight in
BUSINESS_TIMEZONE, the business's own day: counts by the hour, so to the hour in a zone whose
offset is not whole hours) is tied to the calendar, as its name says.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, TypedDict, cast

from shared import stats
from shared.stats import Histogram, Window
from shared.store import Store

FIVE_MINUTES = 300
ONE_MINUTE = 60
DAY = 86_400
DAY_HOURS = 24


class MessageCounts(TypedDict):
    total: int
    today: int
    last_24h: int
    last_minute: int
    last_5_minutes: int
    by_channel_24h: dict[str, int]


class ErrorCounts(TypedDict):
    total: int
    today: int
    last_24h: int
    last_5_minutes: int
    by_kind_5_minutes: dict[str, int]
    by_kind_24h: dict[str, int]


class UserCounts(TypedDict):
    active_24h: int
    today: int


class Percentiles(TypedDict):
    p50: float
    p95: float
    p99: float


class Latency(Percentiles):
    avg: float
    max: float
    count: int


class LatencyBreakdown(TypedDict):
    queue_wait: Percentiles
    processing: Percentiles


class Summary(TypedDict):
    """The counters and latency part of /monitoring/stats (SPEC section 5)."""

    messages: MessageCounts
    errors: ErrorCounts
    users: UserCounts
    latency_ms: Latency
    latency_breakdown_ms: LatencyBreakdown
    tokens_24h: dict[str, int]


class Totals(TypedDict):
    messages: int
    errors: int
    users: int


class HourPoint(Percentiles):
    start: str
    messages: int
    errors: int


class Day(TypedDict):
    """/monitoring/stats/24h (SPEC section 5)."""

    period: str
    start: str
    end: str
    bucket_seconds: int
    totals: Totals
    latency_ms: Percentiles
    series: list[HourPoint]


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _fine_starts(now: float) -> list[int]:
    """The 10-second slices overlapping [now - 5 min, now]."""
    first = stats.slice_start(now - FIVE_MINUTES, stats.FINE_SECONDS)
    return list(range(first, stats.slice_start(now, stats.FINE_SECONDS) + 1, stats.FINE_SECONDS))


def _hour_starts(now: float) -> list[int]:
    """The current hour and the 23 before it."""
    current = stats.slice_start(now, stats.HOUR_SECONDS)
    return [current - stats.HOUR_SECONDS * back for back in range(DAY_HOURS - 1, -1, -1)]


def _midnight(now: float, zone: tzinfo) -> float:
    local = datetime.fromtimestamp(now, zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass(frozen=True, slots=True)
class Raw:
    """One consistent read of everything the stats views need."""

    now: float
    midnight: float  # today's start, in the business's time zone
    fine: dict[int, dict[str, str]]
    hours: dict[int, dict[str, str]]
    total: dict[str, str]
    users_24h: int
    users_today: int


async def read_raw(store: Store, zone: tzinfo = UTC, now: float | None = None) -> Raw:
    """One round trip; raises REDIS_ERRORS when Redis does not answer. `zone`: where "today" is."""
    now = time.time() if now is None else now
    midnight = _midnight(now, zone)
    names = store.names
    fine_starts = _fine_starts(now)
    hour_starts = _hour_starts(now)
    async with store.redis.pipeline(transaction=False) as pipe:
        for start in fine_starts:
            pipe.hgetall(names.stats_fine_key(start))
        for start in hour_starts:
            pipe.hgetall(names.stats_hour_key(start))
        pipe.hgetall(names.stats_total_key)
        pipe.zcount(names.users_key, now - DAY, "+inf")
        pipe.zcount(names.users_key, midnight, "+inf")
        results: list[Any] = await pipe.execute()
    fine = dict(zip(fine_starts, results[: len(fine_starts)], strict=True))
    hours = dict(zip(hour_starts, results[len(fine_starts) : -3], strict=True))
    total, users_24h, users_today = results[-3:]
    return Raw(now, midnight, fine, hours, total, int(users_24h), int(users_today))


def _since(slices: dict[int, dict[str, str]], since: float) -> Window:
    first = stats.slice_start(since, stats.FINE_SECONDS)
    return Window.of(fields for start, fields in slices.items() if start >= first)


def _percentiles(histogram: Histogram) -> Percentiles:
    return {
        "p50": round(histogram.percentile(0.5), 2),
        "p95": round(histogram.percentile(0.95), 2),
        "p99": round(histogram.percentile(0.99), 2),
    }


def summarize(raw: Raw) -> Summary:
    """The counters and latency part of /monitoring/stats."""
    last_5 = _since(raw.fine, raw.now - FIVE_MINUTES)
    last_1 = _since(raw.fine, raw.now - ONE_MINUTE)
    today = Window.of(fields for start, fields in raw.hours.items() if start >= raw.midnight)
    day = Window.of(raw.hours.values())
    return {
        "messages": {
            "total": int(raw.total.get(stats.MESSAGES, 0)),
            "today": today.messages,
            "last_24h": day.messages,
            "last_minute": last_1.messages,
            "last_5_minutes": last_5.messages,
            "by_channel_24h": dict(day.channels),
        },
        "errors": {
            "total": int(raw.total.get(stats.ERRORS, 0)),
            "today": today.errors,
            "last_24h": day.errors,
            "last_5_minutes": last_5.errors,
            "by_kind_5_minutes": dict(last_5.errors_by_kind),
            "by_kind_24h": dict(day.errors_by_kind),
        },
        "users": {"active_24h": raw.users_24h, "today": raw.users_today},
        # shared.stats.Histogram.summary() writes exactly the keys of Latency.
        "latency_ms": cast(Latency, last_5.latency.summary()),
        # Where the end-to-end time went in the same window: queue wait, then the worker.
        "latency_breakdown_ms": {
            "queue_wait": _percentiles(last_5.queue_wait),
            "processing": _percentiles(last_5.processing),
        },
        "tokens_24h": dict(day.tokens),
    }


def last_24h(raw: Raw) -> Day:
    """/monitoring/stats/24h: one point per hour, oldest first, the current (partial) hour last."""
    series: list[HourPoint] = []
    everything = Window()
    for start in sorted(raw.hours):
        hour = Window.of([raw.hours[start]])
        everything.add_slice(raw.hours[start])
        series.append(_hour_point(start, hour))
    return {
        "period": "last_24h",
        "start": iso(min(raw.hours)),
        "end": iso(raw.now),
        "bucket_seconds": stats.HOUR_SECONDS,
        "totals": {"messages": everything.messages, "errors": everything.errors, "users": raw.users_24h},
        "latency_ms": _percentiles(everything.latency),
        "series": series,
    }


def _hour_point(start: int, hour: Window) -> HourPoint:
    point = _percentiles(hour.latency)
    return {
        "start": iso(start),
        "messages": hour.messages,
        "errors": hour.errors,
        "p50": point["p50"],
        "p95": point["p95"],
        "p99": point["p99"],
    }
