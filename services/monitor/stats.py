"""Reading the statistics the workers wrote: windows of slices, merged.

A read touches a fixed number of keys for its window (31 ten-second slices, 25 hourly slices,
two sorted-set counts), whatever the traffic was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import stats
from shared.names import Names
from shared.stats import Window
from shared.store import Store

FIVE_MINUTES = 300
ONE_MINUTE = 60
DAY = 86_400


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _starts(now: float, seconds: int, width: int) -> list[int]:
    """Slice starts covering [now - seconds, now]."""
    first = stats.slice_start(now - seconds, width)
    return list(range(first, stats.slice_start(now, width) + 1, width))


def _midnight(now: float) -> float:
    return float(stats.slice_start(now, DAY))  # UTC


@dataclass(frozen=True, slots=True)
class Raw:
    now: float
    fine: dict[int, dict[str, str]]
    hours: dict[int, dict[str, str]]
    total: dict[str, str]
    users_24h: int
    users_today: int


async def read_raw(store: Store, now: float | None = None) -> Raw:
    now = time.time() if now is None else now
    names: Names = store.names
    fine_starts = _starts(now, FIVE_MINUTES, stats.FINE_SECONDS)
    hour_starts = _starts(now, DAY, stats.HOUR_SECONDS)
    async with store.redis.pipeline(transaction=False) as pipe:
        for start in fine_starts:
            pipe.hgetall(names.stats_fine_key(start))
        for start in hour_starts:
            pipe.hgetall(names.stats_hour_key(start))
        pipe.hgetall(names.stats_total_key)
        pipe.zcount(names.users_key, now - DAY, "+inf")
        pipe.zcount(names.users_key, _midnight(now), "+inf")
        results: list[Any] = await pipe.execute()
    fine = dict(zip(fine_starts, results[: len(fine_starts)], strict=True))
    hours = dict(zip(hour_starts, results[len(fine_starts) : -3], strict=True))
    total, users_24h, users_today = results[-3:]
    return Raw(now, fine, hours, total, int(users_24h), int(users_today))


def _window(slices: dict[int, dict[str, str]], since: float) -> Window:
    return Window.of(
        fields for start, fields in slices.items() if start >= stats.slice_start(since, stats.FINE_SECONDS)
    )


def summarize(raw: Raw) -> dict[str, Any]:
    """The counters and latency part of /monitoring/stats."""
    last_5 = _window(raw.fine, raw.now - FIVE_MINUTES)
    last_1 = _window(raw.fine, raw.now - ONE_MINUTE)
    midnight = _midnight(raw.now)
    today = Window.of(fields for start, fields in raw.hours.items() if start >= midnight)
    return {
        "messages": {
            "total": int(raw.total.get(stats.MESSAGES, 0)),
            "today": today.messages,
            "last_minute": last_1.messages,
            "last_5_minutes": last_5.messages,
        },
        "errors": {
            "total": int(raw.total.get(stats.ERRORS, 0)),
            "today": today.errors,
            "last_5_minutes": last_5.errors,
            "by_kind_today": dict(today.errors_by_kind),
        },
        "users": {"active_24h": raw.users_24h, "today": raw.users_today},
        "latency_ms": last_5.latency.summary(),
        "channels_today": dict(today.channels),
        "tokens_today": dict(today.tokens),
    }


def last_24h(raw: Raw) -> dict[str, Any]:
    series = []
    everything = Window()
    for start in sorted(raw.hours):
        fields = raw.hours[start]
        bucket = Window.of([fields])
        everything.add_slice(fields)
        histogram = bucket.latency
        series.append(
            {
                "start": iso(start),
                "messages": bucket.messages,
                "errors": bucket.errors,
                "p50": round(histogram.percentile(0.50), 2),
                "p95": round(histogram.percentile(0.95), 2),
                "p99": round(histogram.percentile(0.99), 2),
            }
        )
    latency = everything.latency.summary()
    return {
        "period": "last_24h",
        "start": iso(min(raw.hours)),
        "end": iso(raw.now),
        "bucket_seconds": stats.HOUR_SECONDS,
        "totals": {"messages": everything.messages, "errors": everything.errors, "users": raw.users_24h},
        "latency_ms": {"p50": latency["p50"], "p95": latency["p95"], "p99": latency["p99"]},
        "series": series,
    }
