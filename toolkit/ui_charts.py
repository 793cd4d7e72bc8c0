"""Charts of a schedule's runs over time, as inline SVG rendered on the server.

No chart library and no script: a chart is a few hundred bytes of SVG in the page, one point per
run coloured by its status, with a ``<title>`` on each point that the browser shows on hover.
Every text in it is escaped, since metric names come from notebooks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

from toolkit.records import RunRecord

__all__ = ["Chart", "Point", "key_metrics", "line_chart", "schedule_charts"]

WIDTH, HEIGHT = 720, 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 24, 28
STATUS_COLOURS = {
    "succeeded": "#2e7d32",
    "partial": "#f9a825",
    "failed": "#c62828",
    "timed_out": "#ad1457",
    "interrupted": "#6a1b9a",
    "skipped": "#757575",
    "running": "#1565c0",
}


@dataclass(frozen=True)
class Point:
    """One run on a chart: when it started, the value, its status and id (for the tooltip)."""

    at: datetime
    value: float
    status: str
    run_id: str


@dataclass(frozen=True)
class Chart:
    """A titled chart, ready to put in a page."""

    title: str
    svg: Markup


def _number(value: float) -> str:
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def line_chart(points: Sequence[Point], *, title: str, unit: str = "") -> Markup:
    """Return an SVG line chart of ``points`` (oldest first), or a short note when empty."""
    label = escape(title)
    if not points:
        return Markup(f'<p class="empty">No runs with {label} yet.</p>')
    low = min(0.0, min(p.value for p in points))
    high = max(p.value for p in points)
    span = (high - low) or 1.0
    start = points[0].at.timestamp()
    duration = (points[-1].at.timestamp() - start) or 1.0
    inner_w, inner_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(p: Point) -> float:
        if len(points) == 1:
            return _LEFT + inner_w / 2
        return _LEFT + (p.at.timestamp() - start) / duration * inner_w

    def y(value: float) -> float:
        return _TOP + inner_h - (value - low) / span * inner_h

    line = " ".join(f"{x(p):.1f},{y(p.value):.1f}" for p in points)
    dots = "".join(
        f'<circle cx="{x(p):.1f}" cy="{y(p.value):.1f}" r="3" '
        f'fill="{STATUS_COLOURS.get(p.status, "#000")}" class="point status-{escape(p.status)}">'
        f"<title>{escape(p.run_id)} · {escape(p.status)} · {_number(p.value)}{escape(unit)}"
        "</title></circle>"
        for p in points
    )
    suffix = escape(unit)
    first, last = points[0].at, points[-1].at
    return Markup(
        f'<svg class="chart" role="img" aria-label="{label}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{label}</title>"
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + inner_h}" class="axis"/>'
        f'<line x1="{_LEFT}" y1="{_TOP + inner_h}" x2="{WIDTH - _RIGHT}" '
        f'y2="{_TOP + inner_h}" class="axis"/>'
        f'<text x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end">{_number(high)}{suffix}</text>'
        f'<text x="{_LEFT - 6}" y="{_TOP + inner_h}" text-anchor="end">'
        f"{_number(low)}{suffix}</text>"
        f'<text x="{_LEFT}" y="{HEIGHT - 8}">{first:%Y-%m-%d %H:%M}</text>'
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{last:%Y-%m-%d %H:%M}'
        "</text>"
        f'<polyline points="{line}" fill="none" class="line"/>{dots}</svg>'
    )


def key_metrics(records: Sequence[RunRecord], limit: int = 4) -> list[str]:
    """Return the metric names most runs report (at most ``limit``), most common first."""
    seen = Counter(name for r in records for name in r.metrics)
    return [name for name, _ in seen.most_common(limit)]


def schedule_charts(records: Sequence[RunRecord], timezone: str = "UTC") -> list[Chart]:
    """Return the charts of a schedule: duration, then its key metrics, over ``records``."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(timezone)
    ordered = sorted(records, key=lambda r: (r.started_at, r.run_id))

    def when(r: RunRecord) -> datetime:
        return datetime.fromisoformat(r.started_at).astimezone(tz)

    durations = [
        Point(when(r), float(r.duration_s), r.status, r.run_id)
        for r in ordered
        if r.duration_s is not None
    ]
    charts = [Chart("Duration", line_chart(durations, title="duration", unit=" s"))]
    for name in key_metrics(ordered):
        points = [
            Point(when(r), float(r.metrics[name]), r.status, r.run_id)
            for r in ordered
            if isinstance(r.metrics.get(name), (int, float))
        ]
        charts.append(Chart(name, line_chart(points, title=name)))
    return charts
