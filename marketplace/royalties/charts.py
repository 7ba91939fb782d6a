"""Geometry of the server-rendered SVG bar chart on the earnings page (no JavaScript, no network)."""

import datetime as dt
from dataclasses import dataclass

from marketplace.core.money import format_cents

WIDTH, HEIGHT = 720, 200
TOP_SPACE, LABEL_SPACE = 18, 24  # room for the scale above the bars and the month names below


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    label_x: float
    title: str  # tooltip: the month and the amount
    negative: bool


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    width: int
    height: int
    baseline_y: float
    label_y: float
    peak_label: str  # the scale: the best month's amount, written at the top


def monthly_bars(series: list[tuple[dt.date, int]], *, currency: str = "usd") -> BarChart:
    """One bar per month; refunds can make a month negative, drawn below the baseline."""
    plot_height = HEIGHT - TOP_SPACE - LABEL_SPACE
    top = max([cents for _, cents in series] + [0])
    bottom = min([cents for _, cents in series] + [0])
    span = (top - bottom) or 1
    baseline_y = TOP_SPACE + (plot_height * top / span if top or bottom else plot_height)
    slot = WIDTH / max(len(series), 1)
    bars = []
    for index, (month, cents) in enumerate(series):
        bar_height = plot_height * abs(cents) / span
        bars.append(
            Bar(
                x=round(index * slot + slot * 0.15, 1),
                y=round(baseline_y if cents < 0 else baseline_y - bar_height, 1),
                width=round(slot * 0.7, 1),
                height=round(bar_height, 1),
                label=month.strftime("%b %y"),
                label_x=round(index * slot + slot / 2, 1),
                title=f"{month:%B %Y}: {format_cents(cents, currency)}",
                negative=cents < 0,
            )
        )
    return BarChart(
        bars=bars,
        width=WIDTH,
        height=HEIGHT,
        baseline_y=round(baseline_y, 1),
        label_y=HEIGHT - 6,
        peak_label=f"best month {format_cents(top, currency)}" if top else "no earnings yet",
    )
