"""The 24-hour charts, drawn as SVG on the server: no script and nothing fetched from elsewhere.

These functions turn the /monitoring/stats/24h series into shapes (bars, polylines, grid lines and
their labels) in the SVG's own coordinates; the template only writes them out. Colours come from
the stylesheet through class names, so the page's Content-Security-Policy needs no inline style.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

WIDTH = 720
HEIGHT = 220
LEFT = 64  # room for the y labels, which a phone's stylesheet draws twice as large
RIGHT = 12
TOP = 12
BOTTOM = 26


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True, slots=True)
class Line:
    css: str
    label: str
    points: str


@dataclass(frozen=True, slots=True)
class Dot:
    """A marker on a line, so a single hour shows, with its value on hover."""

    x: float
    y: float
    css: str
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(slots=True)
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    bottom_edge: int = HEIGHT - BOTTOM
    bars: list[Bar] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    empty: bool = True


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (the top of the y axis)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    raise AssertionError("unreachable")


def _divisions(top: float) -> int:
    """Round steps: 0-10 by 2, 0-20 by 5, 0-50 by 10."""
    return 4 if f"{top:e}".startswith("2") else 5


def _frame(series: Sequence[dict[str, Any]], top: float, number: Callable[[float, int], str]) -> Chart:
    chart = Chart()
    plot_height = chart.bottom_edge - TOP
    divisions = _divisions(top)
    decimals = 1 if top / divisions < 1 else 0
    for index in range(divisions + 1):
        value = top * index / divisions
        label = f"{value / 1000:g}k" if value >= 1000 else number(value, decimals)  # short: "5k", not "5.000"
        chart.y_ticks.append(Tick(chart.bottom_edge - plot_height * index / divisions, label))
    slot = _slot(series)
    for index, point in enumerate(series):
        start = datetime.fromisoformat(point["start"].replace("Z", "+00:00"))
        if start.hour % 6 == 0:
            chart.x_ticks.append(Tick(LEFT + slot * (index + 0.5), f"{start.hour:02d}:00"))
    return chart


def _slot(series: Sequence[dict[str, Any]]) -> float:
    return (WIDTH - RIGHT - LEFT) / max(len(series), 1)


def _y(chart: Chart, value: float, top: float) -> float:
    return chart.bottom_edge - (chart.bottom_edge - TOP) * value / top


def messages_chart(
    series: Sequence[dict[str, Any]], number: Callable[[float, int], str], labels: dict[str, str]
) -> Chart:
    """One bar per hour for messages, a narrower one inside it for errors."""
    top = nice_ceiling(max((max(p["messages"], p["errors"]) for p in series), default=0))
    chart = _frame(series, top, number)
    slot = _slot(series)
    for index, point in enumerate(series):
        hour = point["start"][11:16]
        for key, css, inset in (("messages", "bar-messages", 0.15), ("errors", "bar-errors", 0.32)):
            if point[key] <= 0:
                continue
            y = _y(chart, point[key], top)
            chart.bars.append(
                Bar(
                    x=round(LEFT + slot * (index + inset), 1),
                    y=round(y, 1),
                    width=round(slot * (1 - 2 * inset), 1),
                    height=round(chart.bottom_edge - y, 1),
                    css=css,
                    title=f"{hour} UTC: {number(point[key], 0)} {labels[key]}",
                )
            )
    chart.empty = not chart.bars
    return chart


def latency_chart(series: Sequence[dict[str, Any]], number: Callable[[float, int], str]) -> Chart:
    """p50, p95 and p99 per hour as three lines, over the hours that had messages."""
    top = nice_ceiling(max((p["p99"] for p in series), default=0))
    chart = _frame(series, top, number)
    slot = _slot(series)
    for key in ("p50", "p95", "p99"):
        dots = [
            Dot(
                x=round(LEFT + slot * (index + 0.5), 1),
                y=round(_y(chart, point[key], top), 1),
                css=f"dot-{key}",
                title=f"{point['start'][11:16]} UTC {key}: {number(point[key], 1)} ms",
            )
            for index, point in enumerate(series)
            if point["messages"] > 0
        ]
        if dots:
            chart.lines.append(Line(f"line-{key}", key, " ".join(f"{dot.x},{dot.y}" for dot in dots)))
            chart.dots.extend(dots)
    chart.empty = not chart.lines
    return chart
