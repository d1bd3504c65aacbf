"""Loss curves as text (for Prefect's markdown artifacts and the terminal) and as SVG (a file beside them).

No plotting library: a curve is a few hundred points, and both formats are small enough to write by hand.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

Series = Sequence[Sequence[float]]  # (step, value) pairs
MARKS = ("*", "o", "+", "x")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _finite(series: dict[str, Series]) -> dict[str, list[tuple[float, float]]]:
    """Each series' finite (step, value) points."""
    return {
        name: [(float(s), float(v)) for s, v in points if math.isfinite(v)] for name, points in series.items()
    }


def _bounds(series: dict[str, list[tuple[float, float]]]) -> tuple[float, float, float, float]:
    """(min step, max step, min value, max value) over every point, widened where they coincide."""
    steps = [s for pts in series.values() for s, _ in pts]
    values = [v for pts in series.values() for _, v in pts]
    lo_s, hi_s, lo_v, hi_v = min(steps), max(steps), min(values), max(values)
    return lo_s, hi_s if hi_s > lo_s else lo_s + 1, lo_v, hi_v if hi_v > lo_v else lo_v + 1


def text_curve(series: dict[str, Series], width: int = 60, height: int = 12) -> str:
    """A character plot of the series (one mark each) with the value axis on the left and a legend."""
    points = {k: v for k, v in _finite(series).items() if v}
    if not points:
        return "(no finite values to plot)"
    lo_s, hi_s, lo_v, hi_v = _bounds(points)
    grid = [[" "] * width for _ in range(height)]
    for mark, pts in zip(MARKS, points.values(), strict=False):
        for s, v in pts:
            col = round((s - lo_s) / (hi_s - lo_s) * (width - 1))
            row = round((hi_v - v) / (hi_v - lo_v) * (height - 1))
            grid[row][col] = mark
    label = max(len(f"{hi_v:.3f}"), len(f"{lo_v:.3f}"))
    lines = []
    for r, row in enumerate(grid):
        value = f"{hi_v - r * (hi_v - lo_v) / (height - 1):.3f}" if r in (0, height // 2, height - 1) else ""
        lines.append(f"{value:>{label}} |{''.join(row)}")
    lines.append(f"{'':>{label}} +{'-' * width}")
    lines.append(f"{'':>{label}}  step {lo_s:g}{'':>{max(1, width - 16)}}{hi_s:g}")
    legend = "   ".join(f"{m} {name}" for m, name in zip(MARKS, points, strict=False))
    return "\n".join([*lines, f"{'':>{label}}  {legend}"])


def svg_curve(series: dict[str, Series], title: str, width: int = 640, height: int = 360) -> str:
    """An SVG line chart of the series with axes, tick labels and a legend."""
    points = {k: v for k, v in _finite(series).items() if v}
    left, right, top, bottom = 60, 20, 30, 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"'
        f' font-size="12"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
    ]
    if points:
        lo_s, hi_s, lo_v, hi_v = _bounds(points)
        pw, ph = width - left - right, height - top - bottom

        def xy(s: float, v: float) -> tuple[float, float]:
            """Plot coordinates of a point."""
            return left + (s - lo_s) / (hi_s - lo_s) * pw, top + (hi_v - v) / (hi_v - lo_v) * ph

        parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for i in range(5):
            v, s = lo_v + i * (hi_v - lo_v) / 4, lo_s + i * (hi_s - lo_s) / 4
            y, x = top + ph - i * ph / 4, left + i * pw / 4
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3f}</text>')
            parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{s:g}</text>')
        parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">step</text>')
        for k, (name, pts) in enumerate(points.items()):
            color = COLORS[k % len(COLORS)]
            coords = [xy(s, v) for s, v in pts]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
            # Sparse series (evaluations) get dots, so a single point still shows.
            parts.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>'
                for x, y in coords
                if len(coords) < 40
            )
            parts.append(
                f'<text x="{left + pw - 8}" y="{top + 16 + 16 * k}" text-anchor="end" fill="{color}">'
                f"{html.escape(name)}</text>"
            )
    return "".join(parts) + "</svg>\n"
