"""Latency histograms and windowed counters: the maths, and what one reply writes (by name).

A latency is filed under a log-scale bucket (eight buckets per doubling, so a bucket spans about
9 % of its value). Each process counts its messages per bucket in memory and adds the counts to
the buckets' counters in Redis with each flush (shared/recorder.py); any number of
buckets from any number of time slices merge by addition, and a percentile is read back by
interpolating inside the bucket that holds it. The cost of a read therefore depends on the
window (how many slices), never on how many messages there were.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.names import Names

BUCKETS_PER_DOUBLING = 8
MIN_MS = 0.01
MAX_BUCKET = 8 * 40  # 0.01 ms * 2**40 is about 127 days: nothing real lands above it

FINE_SECONDS = 10  # short windows (1 and 5 minutes) are read from 10-second slices
HOUR_SECONDS = 3600  # the 24-hour view and "today" are read from hourly slices
# An hour starts with a 10-second slice: the recorder makes both keys once per 10-second slice.
assert HOUR_SECONDS % FINE_SECONDS == 0
FINE_TTL_SECONDS = 15 * 60
HOUR_TTL_SECONDS = 49 * HOUR_SECONDS

# Field names inside one slice hash.
MESSAGES = "n"
ERRORS = "err"
LATENCY_SUM = "e2e_sum"
LATENCY_MAX = "e2e_max"
E2E = "e2e"  # end to end: gateway acceptance to reply ready
QUEUE_WAIT = "wait"  # gateway acceptance to worker start
PROCESSING = "proc"  # worker start to reply ready
# Read back only over the last 5 minutes (services/monitor/stats_reader.py `latency_breakdown_ms`):
# kept in the 10-second slices alone, which spares the hourly ones a field per bucket.
FINE_ONLY = frozenset({QUEUE_WAIT, PROCESSING})


def bucket_of(ms: float) -> int:
    if ms <= MIN_MS:
        return 0
    return min(MAX_BUCKET, int(math.log2(ms / MIN_MS) * BUCKETS_PER_DOUBLING))


def bucket_bounds(index: int) -> tuple[float, float]:
    low = 0.0 if index == 0 else MIN_MS * 2 ** (index / BUCKETS_PER_DOUBLING)
    return low, MIN_MS * 2 ** ((index + 1) / BUCKETS_PER_DOUBLING)


def slice_start(timestamp: float, width: int) -> int:
    return int(timestamp // width) * width


@dataclass(slots=True)
class Histogram:
    counts: Counter[int] = field(default_factory=Counter)
    total: float = 0.0
    maximum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def merge_fields(self, prefix: str, fields: Mapping[str, str]) -> None:
        """Add the `{prefix}:{bucket}` counters of one slice hash."""
        marker = prefix + ":"
        for name, value in fields.items():
            if name.startswith(marker):
                self.counts[int(name[len(marker) :])] += int(value)

    def percentile(self, q: float) -> float:
        """The q-quantile (0..1), interpolated linearly inside its bucket."""
        count = self.count
        if count == 0:
            return 0.0
        rank = q * count
        seen = 0
        for index in sorted(self.counts):
            in_bucket = self.counts[index]
            if seen + in_bucket >= rank:
                low, high = bucket_bounds(index)
                if self.maximum:
                    high = min(high, max(low, self.maximum))
                fraction = (rank - seen) / in_bucket
                return low + (high - low) * fraction
            seen += in_bucket
        return self.maximum

    def summary(self) -> dict[str, float | int]:
        count = self.count
        return {
            "p50": round(self.percentile(0.50), 2),
            "p95": round(self.percentile(0.95), 2),
            "p99": round(self.percentile(0.99), 2),
            "avg": round(self.total / count, 2) if count else 0.0,
            "max": round(self.maximum, 2),
            "count": count,
        }


@dataclass(slots=True)
class Window:
    """Counters and end-to-end latency merged over some slices."""

    messages: int = 0
    errors: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    # Where the time went: waiting in the queue, and in the worker (no sum or max is kept for these).
    queue_wait: Histogram = field(default_factory=Histogram)
    processing: Histogram = field(default_factory=Histogram)

    def add_slice(self, fields: Mapping[str, str]) -> None:
        if not fields:
            return
        self.messages += int(fields.get(MESSAGES, 0))
        self.errors += int(fields.get(ERRORS, 0))
        self.latency.total += float(fields.get(LATENCY_SUM, 0.0))
        self.latency.maximum = max(self.latency.maximum, float(fields.get(LATENCY_MAX, 0.0)))
        self.latency.merge_fields(E2E, fields)
        self.queue_wait.merge_fields(QUEUE_WAIT, fields)
        self.processing.merge_fields(PROCESSING, fields)
        for name, value in fields.items():
            kind, _, rest = name.partition(":")
            if kind == "errkind":
                self.errors_by_kind[rest] += int(value)
            elif kind == "channel":
                self.channels[rest] += int(value)
            elif kind == "tokens":
                self.tokens[rest] += int(value)

    @classmethod
    def of(cls, slices: Iterable[Mapping[str, str]]) -> Window:
        window = cls()
        for fields in slices:
            window.add_slice(fields)
        return window


# Writing (the worker's recorder, for each reply its commit made stand) ---------------------------
@dataclass(frozen=True, slots=True)
class ReplyCounts:
    """What one committed reply adds to the slices."""

    channel: str
    end_to_end_ms: float
    queue_wait_ms: float
    processing_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    silenced: bool = False
    handoff: bool = False
    merged: bool = False


def slice_keys(names: Names, now: float) -> tuple[tuple[str, int], tuple[str, int]]:
    """The fine and the hourly slice that `now` falls in, with their TTLs."""
    return (
        (names.stats_fine_key(slice_start(now, FINE_SECONDS)), FINE_TTL_SECONDS),
        (names.stats_hour_key(slice_start(now, HOUR_SECONDS)), HOUR_TTL_SECONDS),
    )


def reply_counters(counts: ReplyCounts) -> dict[str, int]:
    """The counters one reply adds to each slice, by field (shared/recorder.py `Recorder.reply`
    adds them, with the latency to LATENCY_SUM and, if it is the largest, to LATENCY_MAX)."""
    add = {
        MESSAGES: 1,
        f"{E2E}:{bucket_of(counts.end_to_end_ms)}": 1,
        f"{QUEUE_WAIT}:{bucket_of(counts.queue_wait_ms)}": 1,
        f"{PROCESSING}:{bucket_of(counts.processing_ms)}": 1,
        f"channel:{counts.channel}": 1,
    }
    if counts.prompt_tokens or counts.completion_tokens:
        add["tokens:prompt"] = counts.prompt_tokens
        add["tokens:completion"] = counts.completion_tokens
    if counts.silenced:
        add["outcome:silenced"] = 1
    elif counts.handoff:
        add["outcome:handoff"] = 1
    if counts.merged:
        add["outcome:merged"] = 1
    return add
