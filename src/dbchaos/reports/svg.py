"""A small inline-SVG line/bar chart: self-contained reports need no JavaScript and no CDN."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 760, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 26, 30


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float | None]]
    color: str
    bars: bool = False


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    label: str


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def chart(
    title: str,
    series: Sequence[Series],
    x_max: float,
    windows: Sequence[Window] = (),
    y_fmt: Callable[[float], str] = lambda v: f"{v:g}",
    y_min_max: float = 1.0,
) -> str:
    """An SVG chart of ``series`` over 0..``x_max`` seconds, with shaded fault ``windows``."""
    x_max = max(x_max, 1e-9)
    ys = [y for s in series for _, y in s.points if y is not None]
    y_top = max([y_min_max, *ys]) * 1.1
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + pw * min(max(x / x_max, 0.0), 1.0)

    def sy(y: float) -> float:
        return TOP + ph * (1 - min(max(y / y_top, 0.0), 1.0))

    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{LEFT}" y="16" class="ct">{escape(title)}</text>',
    ]
    for w in windows:
        x0, x1 = sx(w.start), sx(w.end)
        out.append(
            f'<rect x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1):.1f}" height="{ph}" class="win">'
            f"<title>{escape(w.label)}</title></rect>"
        )
    step = _nice_step(y_top, 4)
    v = 0.0
    while v <= y_top:
        y = sy(v)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="yl">{escape(y_fmt(v))}</text>')
        v += step
    xstep = _nice_step(x_max, 8)
    x = 0.0
    while x <= x_max + 1e-9:
        out.append(f'<text x="{sx(x):.1f}" y="{HEIGHT - 10}" class="xl">{x:g}s</text>')
        x += xstep
    for s in series:
        pts = [(px, py) for px, py in s.points if py is not None]
        if s.bars:
            bw = max(pw / max(len(s.points), 1) * 0.7, 1.0)
            for px, py in pts:
                out.append(
                    f'<rect x="{sx(px):.1f}" y="{sy(py):.1f}" width="{bw:.1f}" height="{sy(0) - sy(py):.1f}" '
                    f'fill="{s.color}" opacity="0.55">'
                    f"<title>{escape(s.label)} {escape(y_fmt(py))} at {px:g}s</title></rect>"
                )
        elif pts:
            d = " ".join(f"{'M' if i == 0 else 'L'}{sx(px):.1f},{sy(py):.1f}" for i, (px, py) in enumerate(pts))
            out.append(f'<path d="{d}" fill="none" stroke="{s.color}" stroke-width="2"/>')
    # legend: right-aligned on the title's line, clear of the title
    lx = WIDTH - RIGHT - sum(24 + 7 * len(s.label) for s in series)
    for s in series:
        out.append(f'<rect x="{lx}" y="7" width="10" height="10" fill="{s.color}"/>')
        out.append(f'<text x="{lx + 14}" y="16" class="lg">{escape(s.label)}</text>')
        lx += 24 + 7 * len(s.label)
    out.append("</svg>")
    return "".join(out)
