"""Inline SVG bar charts drawn by the server: one bar per day, stacked by plan.

Pure: numbers in, SVG text out. Every label is escaped here; the template inserts the result
as markup. Colours are presentation attributes, so no inline style is needed under the CSP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape

from markupsafe import Markup

COLOURS = {"cheap": "#2f9e6b", "resale": "#2457d6", "byok": "#c76b12"}
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 170, 70, 22, 10


def stacked_bars(label: str, days: Sequence[str], series: Mapping[str, Sequence[int]],
                 fmt: Callable[[int], str]) -> Markup:
    """`series` maps a plan to one value per day (same length as `days`)."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    top = max(totals, default=0) or 1
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(len(days), 1)
    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>']
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}" stroke="#dde2ea"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#5d6878">'
                     f'{escape(fmt(round(top * fraction)))}</text>')
    for i, day in enumerate(days):
        x, base = LEFT + i * slot + slot * 0.15, float(TOP + plot_h)
        for plan, values in series.items():
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            base -= h
            parts.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                         f'fill="{COLOURS.get(plan, "#888")}"><title>{escape(day)} {escape(plan)}: '
                         f'{escape(fmt(value))}</title></rect>')
        if i % 7 == 0 or (i == len(days) - 1 and i % 7 >= 3):  # the last day too, unless crowded
            parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11" '
                         f'fill="#5d6878">{escape(day[5:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # reason: every interpolated text above is escaped
