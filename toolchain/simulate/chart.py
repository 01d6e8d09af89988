"""A per-layer chart like the SqueezeNext paper's Figure 6, as hand-written SVG.

Bars: cycles per layer (left axis); dots joined by a dashed line: MACs per cycle (right axis, the
paper's "acceleration efficiency"). One bar per layer, in execution order, coloured by dataflow. Layer
names come from models or ONNX files: they are data, escaped for XML and stripped of control characters.
"""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape

from toolchain.errors import ArtifactError
from toolchain.fsutil import atomic_write_bytes
from toolchain.simulate.cost import OS, SimulationResult

_NOT_XML_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_COLOURS = {"ws": "#4878a8", "os": "#e49444"}
WIDTH, HEIGHT = 960, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 70, 50, 120


def _text(value: object) -> str:
    return escape(_NOT_XML_TEXT.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                    else f"\\u{ord(m.group()):04x}", str(value)), {'"': "&quot;"})


def _ticks(top: float, count: int = 5) -> list[float]:
    return [top * index / count for index in range(count + 1)]


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def figure6_svg(result: SimulationResult) -> str:
    """The chart of one simulated network as an SVG document."""
    costs = result.layers
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    cycles_top = _nice_ceiling(max(cost.cycles for cost in costs))
    rate_top = _nice_ceiling(max(max(cost.macs_per_cycle for cost in costs), 1.0))
    slot = plot_w / len(costs)
    bar_w = max(slot * 0.7, 0.5)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<title>{_text(result.network)}: cycles and MACs/cycle per layer</title>',
        '<rect x="0" y="0" width="100%" height="100%" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{_text(result.network)} on '
        f'{_text(result.accelerator.label)} ({_text(result.dataflow)}): {result.cycles:,} cycles, '
        f'{result.macs_per_cycle:.1f} MACs/cycle</text>',
    ]
    for tick in _ticks(cycles_top):
        y = TOP + plot_h - plot_h * tick / cycles_top
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:,.0f}</text>')
    for tick in _ticks(rate_top):
        y = TOP + plot_h - plot_h * tick / rate_top
        parts.append(f'<text x="{LEFT + plot_w + 6}" y="{y + 4:.1f}">{tick:g}</text>')
    parts.append(f'<text transform="translate(18 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 'cycles</text>')
    parts.append(f'<text transform="translate({WIDTH - 14} {TOP + plot_h / 2}) rotate(90)" '
                 'text-anchor="middle">MACs per cycle</text>')
    points = []
    for index, cost in enumerate(costs):
        x = LEFT + slot * index + (slot - bar_w) / 2
        height = plot_h * cost.cycles / cycles_top
        name = _text(cost.layer.name)
        parts.append(
            f'<rect class="bar" x="{x:.2f}" y="{TOP + plot_h - height:.2f}" width="{bar_w:.2f}" '
            f'height="{height:.2f}" fill="{_COLOURS[cost.dataflow]}"><title>{name} ({_text(cost.layer.shape_text)}): '
            f'{cost.cycles:,} cycles, {cost.macs_per_cycle:.1f} MACs/cycle, {cost.dataflow}, '
            f'{cost.bound}-bound</title></rect>')
        centre = LEFT + slot * index + slot / 2
        points.append((centre, TOP + plot_h - plot_h * cost.macs_per_cycle / rate_top))
        if len(costs) <= 80:
            label_y = TOP + plot_h + 8
            parts.append(f'<text x="{centre:.2f}" y="{label_y}" font-size="8" text-anchor="end" '
                         f'transform="rotate(-60 {centre:.2f} {label_y})">{name}</text>')
    path = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
    parts.append(f'<polyline class="efficiency" points="{path}" fill="none" stroke="#c03030" '
                 'stroke-dasharray="4 3"/>')
    parts.extend(f'<circle cx="{x:.2f}" cy="{y:.2f}" r="2" fill="#c03030"/>' for x, y in points)
    parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>')
    legend_y = HEIGHT - 14
    for offset, (flow, label) in enumerate((("ws", "weight stationary"), (OS, "output stationary (SOC-MOP)"))):
        x = LEFT + offset * 220
        parts.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{_COLOURS[flow]}"/>')
        parts.append(f'<text x="{x + 14}" y="{legend_y}">{label}</text>')
    parts.append(f'<text x="{LEFT + 480}" y="{legend_y}" fill="#c03030">- - MACs per cycle (right axis)</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_chart(result: SimulationResult, path: Path) -> None:
    """Write the chart atomically: a failure leaves no partial file."""
    data = figure6_svg(result).encode()
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:  # unwritable, read-only or full disk, a file where a folder should be
        raise ArtifactError(f"cannot write the chart {path}: {exc.strerror or type(exc).__name__}",
                            "choose a --chart path in a folder you can write to (nothing was written)") from None
