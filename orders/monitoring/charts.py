"""Line charts as server-rendered SVG: points in, markup out. No JavaScript, no library.

`line_chart` is a pure function. The SVG has a viewBox and is drawn at width 100 %, so one chart
fits a 390 px phone and a desktop column alike (its text scales with it). A value that is not
known (the server did not answer) breaks the line instead of being drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 480, 220
LEFT, RIGHT, TOP, BOTTOM = 66, 10, 30, 26
# At most this wide on a desktop (px), so its text stays about the size of the page's.
MAX_WIDTH_PX = 640  # room for the axis labels and the legend
COLOURS = ("#0b7285", "#e8590c", "#5f3dc4", "#2b8a3e")


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[tuple[datetime, float | None]]
    dashed: bool = False


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is >= value (1 for nothing to show)."""
    if value <= 1e-9 or not math.isfinite(value):  # nothing, or too small to tell from it
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 5, 10):
        if value <= factor * power * (1 + 1e-9):
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop returns


def short_bytes(value: float) -> str:
    """An axis label for bytes: 0, 512K, 1.5G (binary units, at most 4 characters and a unit)."""
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if value >= 10 or value == 0 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.0f}T"  # pragma: no cover - the loop returns


def segments(
    points: Sequence[tuple[datetime, float | None]],
) -> list[list[tuple[datetime, float]]]:
    """The runs of known values (a None ends a run)."""
    runs: list[list[tuple[datetime, float]]] = []
    current: list[tuple[datetime, float]] = []
    for at, value in points:
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((at, value))
    if current:
        runs.append(current)
    return runs


def line_chart(
    *,
    title: str,
    lines: Sequence[Line],
    start: datetime,
    end: datetime,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    time_fmt: str = "%H:%M",
    chart_id: str = "",
) -> SafeString:
    """An SVG line chart of `lines` between `start` and `end`, y from 0 to a round maximum."""
    known = [v for line in lines for _, v in line.points if v is not None]
    top = nice_ceiling(max(known, default=0.0))
    span = max((end - start).total_seconds(), 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: datetime) -> float:
        return LEFT + plot_w * min(max((at - start).total_seconds() / span, 0.0), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(max(value / top, 0.0), 1.0))

    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'preserveAspectRatio="xMidYMid meet" font-size="14" font-family="sans-serif" '
        f'style="max-width:{MAX_WIDTH_PX}px;height:auto;display:block"'
        + (f' id="{escape(chart_id)}"' if chart_id else "")
        + f"><title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="16" font-weight="bold">{escape(title)}</text>',
    ]
    # Axes, grid and labels: 0, half and the top; start, middle and end times.
    for fraction in (0.0, 0.5, 1.0):
        gy = y(top * fraction)
        out.append(
            f'<line x1="{LEFT}" y1="{gy:.1f}" x2="{WIDTH - RIGHT}" y2="{gy:.1f}" '
            f'stroke="#ccc" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" fill="#555">'
            f"{escape(fmt(top * fraction))}</text>"
        )
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        moment = start + (end - start) * fraction
        out.append(
            f'<text x="{LEFT + plot_w * fraction:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" '
            f'fill="#555">{escape(moment.strftime(time_fmt))}</text>'
        )
    out.append(
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#888"/>'
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
        f'stroke="#888"/>'
    )
    legend_x = WIDTH - RIGHT
    for index, line in reversed(list(enumerate(lines))):
        colour = COLOURS[index % len(COLOURS)]
        label = escape(line.label)
        out.append(f'<text x="{legend_x}" y="16" text-anchor="end" fill="{colour}">{label}</text>')
        legend_x -= 8 * len(line.label) + 14
    for index, line in enumerate(lines):
        colour = COLOURS[index % len(COLOURS)]
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        for run in segments(line.points):
            coords = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in run)
            if len(run) == 1:
                cx, cy = coords.split(",")
                out.append(
                    f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}" '
                    f'data-series="{escape(line.label)}"/>'
                )
                continue
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} '
                f'data-series="{escape(line.label)}" points="{coords}"/>'
            )
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308 - every text above is escaped
