"""Business hours (BUSINESS_HOURS, BUSINESS_TIMEZONE, BUSINESS_HOLIDAYS): when people answer.

Read once at start (shared/settings.py); the worker's reply policy asks `next_opening` when a
customer asks for a person (outside hours: an away message naming it), the admin area asks
`is_open` for its "open / closed now". No windows at all means always open.

The format is `days hours[, hours]` groups separated by `;`: `mon-fri 08:00-18:00; sat 08:00-12:00`,
`mon,wed 09:00-12:00,13:00-17:00`. Days are English or Portuguese three-letter names (`seg-sex`).
A window ends after it starts on the same day (`24:00` closes at midnight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "America/Sao_Paulo"
DAYS = {
    **{name: number for number, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))},
    **{name: number for number, name in enumerate(("seg", "ter", "qua", "qui", "sex", "sab", "dom"))},
}
_TIME = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")
# Holidays can be a year away and windows a week: an opening is always found within this.
_SEARCH_DAYS = 400


@dataclass(frozen=True, slots=True)
class Window:
    """One opening: a weekday (0 Monday) from `start` to `end`, minutes after local midnight."""

    weekday: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class BusinessHours:
    windows: tuple[Window, ...] = ()
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))
    holidays: frozenset[date] = frozenset()

    @property
    def always_open(self) -> bool:
        return not self.windows

    def is_open(self, at: float) -> bool:
        """Whether people answer at the epoch time `at`."""
        if self.always_open:
            return True
        local = datetime.fromtimestamp(at, self.timezone)
        minute = local.hour * 60 + local.minute
        return local.date() not in self.holidays and any(
            w.weekday == local.weekday() and w.start <= minute < w.end for w in self.windows
        )

    def describe(self, at: float) -> dict[str, Any]:
        """Open or closed at `at`, for the admin area: the next opening (local ISO time) when closed."""
        opening = self.next_opening(at)
        return {
            "always_open": self.always_open,
            "open": opening is None,
            "next_opening": opening.isoformat() if opening else None,
            "timezone": self.timezone.key,
        }

    def next_opening(self, at: float) -> datetime | None:
        """The next moment (local time) people answer after `at`; None when open now."""
        if self.is_open(at):
            return None
        local = datetime.fromtimestamp(at, self.timezone)
        minute = local.hour * 60 + local.minute
        for offset in range(_SEARCH_DAYS):
            day = local.date() + timedelta(days=offset)
            if day in self.holidays:
                continue
            starts = sorted(w.start for w in self.windows if w.weekday == day.weekday())
            later = [s for s in starts if offset > 0 or s > minute]
            if later:
                return datetime(day.year, day.month, day.day, tzinfo=self.timezone) + timedelta(minutes=later[0])
        return None  # every day for a year is a holiday


def parse_windows(text: str) -> tuple[Window, ...]:
    """`mon-fri 08:00-18:00; sat 08:00-12:00` -> windows; ValueError saying what is wrong."""
    windows: list[Window] = []
    for group in (part.strip() for part in text.split(";")):
        if not group:
            continue
        days, _, spans = group.partition(" ")
        if not spans.strip():
            raise ValueError(f"{group!r} has no hours (expected e.g. 'mon-fri 08:00-18:00')")
        for weekday in _days(days.lower()):
            windows.extend(Window(weekday, start, end) for start, end in map(_span, spans.replace(" ", "").split(",")))
    if not windows:
        raise ValueError("no opening hours given")
    return tuple(windows)


def _days(text: str) -> list[int]:
    days: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{part!r} is not a day or a range of days (mon..sun or seg..dom)")
        low, high = DAYS[first], DAYS[last or first]
        days.extend(range(low, high + 1) if low <= high else [*range(low, 7), *range(0, high + 1)])
    return days


def _span(text: str) -> tuple[int, int]:
    start, _, end = text.partition("-")
    low, high = _minutes(start), _minutes(end)
    if high <= low:
        raise ValueError(f"{text!r} must end after it starts")
    return low, high


def _minutes(text: str) -> int:
    match = _TIME.match(text)
    if match is None or int(match[1]) * 60 + int(match[2]) > 24 * 60:
        raise ValueError(f"{text!r} is not a time of day HH:MM")
    return int(match[1]) * 60 + int(match[2])


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone name such as America/Sao_Paulo") from None


def parse_holidays(text: str) -> frozenset[date]:
    days = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            days.add(date.fromisoformat(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an ISO date YYYY-MM-DD") from None
    return frozenset(days)
