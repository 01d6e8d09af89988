"""Plots as inline SVG, written by hand: scatter with a Pareto front, grouped bars, lines.

No library, no script, no external reference: the page that embeds them opens from a file. Every label
is escaped (it may come from a manifest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

WIDTH, HEIGHT = 620, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 170, 34, 52
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str = ""  # the tooltip
    tag: str = ""  # a short text written beside the point


@dataclass(frozen=True)
class Series:
    name: str
    points: list[Point] = field(default_factory=list)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _number(value: float) -> str:
    return f"{value:.4g}"


class _Canvas:
    def __init__(self, title: str, x_label: str, y_label: str, role: str) -> None:
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-plot="{escape(role)}" '
                      f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
                      f'aria-label="{escape(title)}">',
                      f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
                      f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
                      f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 10}" font-size="12" '
                      f'text-anchor="middle">{escape(x_label)}</text>',
                      f'<text transform="translate(16 {TOP + (HEIGHT - TOP - BOTTOM) / 2}) rotate(-90)" '
                      f'font-size="12" text-anchor="middle">{escape(y_label)}</text>']

    def axes(self, x_ticks: list[tuple[float, str]], y_ticks: list[float], x_of, y_of, slanted: bool = False) -> None:
        bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
        for value in y_ticks:
            y = y_of(value)
            self.parts.append(f'<line x1="{LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            self.parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
                              f'{_number(value)}</text>')
        for value, label in x_ticks:
            x = x_of(value)
            if slanted:  # many groups: names at an angle so that neighbours do not run into each other
                self.parts.append(f'<text x="{x:.1f}" y="{bottom + 12}" font-size="10" text-anchor="end" '
                                  f'transform="rotate(-25 {x:.1f} {bottom + 12})">{escape(label)}</text>')
                continue
            self.parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">'
                              f'{escape(label)}</text>')
        self.parts.append(f'<line x1="{LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>')
        self.parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}" stroke="#333"/>')

    def legend(self, names: Sequence[str], marker: str = "rect", dashed: str | None = None) -> None:
        for index, name in enumerate([*names, *([dashed] if dashed else [])]):
            y = TOP + 8 + index * 18
            colour = COLOURS[index % len(COLOURS)]
            x = WIDTH - RIGHT + 14
            if index == len(names):
                self.parts.append(f'<line x1="{x - 2}" x2="{x + 12}" y1="{y - 4}" y2="{y - 4}" stroke="#555" '
                                  'stroke-width="2" stroke-dasharray="4 3"/>')
            elif marker == "rect":
                self.parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
            else:
                self.parts.append(f'<circle cx="{x + 5}" cy="{y - 4}" r="4" fill="{colour}"/>')
            self.parts.append(f'<text x="{x + 16}" y="{y}" font-size="11">{escape(name[:24])}</text>')

    def done(self) -> str:
        return "".join(self.parts) + "</svg>"


def _range(values: Sequence[float], zero: bool) -> tuple[float, float]:
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if zero:
        low = min(0.0, low)
    if high == low:
        low, high = low - 1.0, high + 1.0
    pad = (high - low) * 0.08
    return (low if zero else low - pad), high + pad


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (lower x = faster, higher y = more accurate), by x."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.x, -p.y)):
        if not front or point.y > front[-1].y:
            front.append(point)
    return front


def scatter(title: str, x_label: str, y_label: str, series: Sequence[Series], front: bool = True,
            role: str = "scatter") -> str:
    """Points per series; the Pareto front over all of them as a dashed line."""
    every = [point for item in series for point in item.points]
    x_low, x_high = _range([p.x for p in every], zero=True)
    y_low, y_high = _range([p.y for p in every], zero=False)
    x_of = lambda v: LEFT + (v - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)  # noqa: E731
    y_of = lambda v: HEIGHT - BOTTOM - (v - y_low) / (y_high - y_low) * (HEIGHT - TOP - BOTTOM)  # noqa: E731
    canvas = _Canvas(title, x_label, y_label, role)
    canvas.axes([(v, _number(v)) for v in _ticks(x_low, x_high) if x_low <= v <= x_high],
                [v for v in _ticks(y_low, y_high) if y_low <= v <= y_high], x_of, y_of)
    if front and len(every) > 1:
        line = " ".join(f"{x_of(p.x):.1f},{y_of(p.y):.1f}" for p in pareto_front(every))
        canvas.parts.append(f'<polyline class="pareto" points="{line}" fill="none" stroke="#555" '
                            'stroke-width="1.5" stroke-dasharray="5 4"/>')
        for point in pareto_front(every):
            canvas.parts.append(f'<circle cx="{x_of(point.x):.1f}" cy="{y_of(point.y):.1f}" r="8" fill="none" '
                                'stroke="#555" stroke-width="1.5"/>')
    placed: list[tuple[float, float, float, float]] = []  # label boxes already drawn
    for index, item in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        for number, point in enumerate(item.points):
            canvas.parts.append(f'<circle cx="{x_of(point.x):.1f}" cy="{y_of(point.y):.1f}" r="5" fill="{colour}" '
                                f'fill-opacity="0.8"><title>{escape(point.label)}</title></circle>')
            if point.tag and len(every) <= 24:
                # beside the point, on its left near the right edge (the legend is there); a label that would
                # overlap one already drawn is left out (the point keeps its tooltip, the tables have the numbers)
                left = x_of(point.x) > WIDTH - RIGHT - 90
                text = point.tag[:28]
                x, y = x_of(point.x) + (-7 if left else 7), y_of(point.y) + (-8 if number % 2 == 0 else 16)
                box = (x - 5.5 * len(text) if left else x, y - 10, x if left else x + 5.5 * len(text), y + 2)
                if any(box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]
                       for other in placed):
                    continue
                placed.append(box)
                canvas.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" '
                                    f'text-anchor="{"end" if left else "start"}" fill="#333">'
                                    f'{escape(text)}</text>')
    canvas.legend([item.name for item in series], marker="circle",
                  dashed="Pareto front" if front and len(every) > 1 else None)
    return canvas.done()


def bars(title: str, y_label: str, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
         role: str = "bars") -> str:
    """Grouped bars: one group per entry of `groups`, one bar per series (None: no bar, marked "—")."""
    values = [v for _, column in series for v in column if v is not None]
    _, y_high = _range(values, zero=True)
    y_of = lambda v: HEIGHT - BOTTOM - v / y_high * (HEIGHT - TOP - BOTTOM)  # noqa: E731
    span = (WIDTH - LEFT - RIGHT) / max(1, len(groups))
    width = span * 0.8 / max(1, len(series))
    canvas = _Canvas(title, "", y_label, role)
    canvas.axes([(index, name[:18]) for index, name in enumerate(groups)],
                [v for v in _ticks(0, y_high) if v <= y_high], lambda i: LEFT + span * (i + 0.5), y_of,
                slanted=len(groups) > 4)
    for index, (name, column) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        for group, value in enumerate(column):
            x = LEFT + span * group + span * 0.1 + width * index
            if value is None:
                canvas.parts.append(f'<text x="{x + width / 2:.1f}" y="{HEIGHT - BOTTOM - 4}" font-size="10" '
                                    f'text-anchor="middle">—</text>')
                continue
            top = y_of(value)
            canvas.parts.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" '
                                f'height="{HEIGHT - BOTTOM - top:.1f}" fill="{colour}"><title>{escape(name)}: '
                                f'{_number(value)}</title></rect>')
    canvas.legend([name for name, _ in series])
    return canvas.done()


def lines(title: str, x_label: str, y_label: str, series: Sequence[Series], role: str = "lines") -> str:
    """One polyline with markers per series."""
    every = [point for item in series for point in item.points]
    x_low, x_high = _range([p.x for p in every], zero=False)
    y_low, y_high = _range([p.y for p in every], zero=False)
    x_of = lambda v: LEFT + (v - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)  # noqa: E731
    y_of = lambda v: HEIGHT - BOTTOM - (v - y_low) / (y_high - y_low) * (HEIGHT - TOP - BOTTOM)  # noqa: E731
    canvas = _Canvas(title, x_label, y_label, role)
    x_ticks = sorted({p.x for p in every}) if len({p.x for p in every}) <= 12 else _ticks(x_low, x_high)
    canvas.axes([(v, _number(v)) for v in x_ticks if x_low <= v <= x_high],
                [v for v in _ticks(y_low, y_high) if y_low <= v <= y_high], x_of, y_of)
    for index, item in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(f"{x_of(p.x):.1f},{y_of(p.y):.1f}" for p in item.points)
        canvas.parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for point in item.points:
            canvas.parts.append(f'<circle cx="{x_of(point.x):.1f}" cy="{y_of(point.y):.1f}" r="3" fill="{colour}">'
                                f'<title>{escape(item.name)} {_number(point.x)}: {_number(point.y)}</title></circle>')
    canvas.legend([item.name for item in series])
    return canvas.done()


def _decades(low: float, high: float) -> tuple[float, float]:
    return 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))


def roofline_plot(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float, str]]]],
                  ceilings: dict, role: str = "roofline") -> str:
    """A roofline on log-log axes: FLOP/byte against GFLOP/s, one point per layer and series, under the machine's
    compute peak (flat) and memory bandwidth (sloped) where they are known; without them (an emulated target)
    the points alone, and the title says so."""
    peak_values = list(((ceilings.get("peak") or {}).get("fp32_gflops") or {}).values())
    peak = float(peak_values[0]) if peak_values else None
    bandwidth = (ceilings.get("bandwidth") or {}).get("gbps")
    every = [(x, y) for _, points in series for x, y, _ in points if x > 0 and y > 0]
    xs = [x for x, _ in every] or [1.0]
    ys = [y for _, y in every] + ([peak] if peak else []) or [1.0]
    x_low, x_high = _decades(min(xs) / 2, max(xs) * 2)
    y_low, y_high = _decades(min(ys) / 2, max(ys) * 2)
    lx = lambda v: LEFT + (math.log10(v) - math.log10(x_low)) / (math.log10(x_high) - math.log10(x_low)) * (  # noqa: E731
        WIDTH - LEFT - RIGHT)
    ly = lambda v: HEIGHT - BOTTOM - (math.log10(v) - math.log10(y_low)) / (  # noqa: E731
        math.log10(y_high) - math.log10(y_low)) * (HEIGHT - TOP - BOTTOM)
    canvas = _Canvas(title, "arithmetic intensity, FLOP/byte (log)", "GFLOP/s (log)", role)
    x_ticks = [10.0 ** e for e in range(round(math.log10(x_low)), round(math.log10(x_high)) + 1)]
    y_ticks = [10.0 ** e for e in range(round(math.log10(y_low)), round(math.log10(y_high)) + 1)]
    canvas.axes([(v, _number(v)) for v in x_ticks], y_ticks, lx, ly)
    if peak or bandwidth:
        samples = [x_low * (x_high / x_low) ** (i / 60) for i in range(61)]
        roof = [(x, min(value for value in (peak, bandwidth * x if bandwidth else None) if value)) for x in samples]
        line = " ".join(f"{lx(x):.1f},{ly(min(max(y, y_low), y_high)):.1f}" for x, y in roof)
        canvas.parts.append(f'<polyline class="ceiling" points="{line}" fill="none" stroke="#555" stroke-width="2"/>')
        labels = []
        if peak:
            labels.append(f"peak {_number(peak)} GFLOP/s ({(ceilings.get('peak') or {}).get('source', '')})")
        if bandwidth:
            labels.append(f"bandwidth {_number(bandwidth)} GB/s ({(ceilings.get('bandwidth') or {}).get('source', '')})")
        for index, text in enumerate(labels):
            canvas.parts.append(f'<text x="{LEFT + 6}" y="{TOP + 12 + 13 * index}" font-size="10" fill="#333">'
                                f'{escape(text)}</text>')
    for index, (name, points) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        for x, y, label in points:
            if x <= 0 or y <= 0:
                continue
            canvas.parts.append(f'<circle cx="{lx(x):.1f}" cy="{ly(y):.1f}" r="4" fill="{colour}" fill-opacity="0.75">'
                                f'<title>{escape(f"{name} {label}: {_number(x)} FLOP/B, {_number(y)} GFLOP/s")}'
                                '</title></circle>')
    canvas.legend([name for name, _ in series], marker="circle")
    return canvas.done()
