"""Server-rendered SVG charts (no script, no external assets): stacked bars per day.

Pure functions from counts to SVG text; every label is escaped. A <title> on each segment gives
the exact figure on hover.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from html import escape

# Colour-blind-safe palette (Okabe-Ito), then greys.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999", "#666666")
ACTION_COLOURS = {
    "killed": "#D55E00",
    "suspended": "#E69F00",
    "denied": "#CC79A7",
    "connection_blocked": "#8B3A62",
    "kill_failed": "#B22222",
    "would_block": "#56B4E9",
    "reported": "#0072B2",
    "protected": "#999999",
}


@dataclass(frozen=True, slots=True)
class Series:
    key: str
    colour: str
    total: int


def days_between(first: date, last: date) -> list[str]:
    n = (last - first).days
    return [(first + timedelta(days=i)).isoformat() for i in range(max(n, 0) + 1)]


def colours(keys: Iterable[str], fixed: dict[str, str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    spare = iter(PALETTE)
    for key in keys:
        out[key] = (fixed or {}).get(key) or next(spare, "#666666")
    return out


def stacked_bars(
    days: Sequence[str],
    counts: dict[tuple[str, str], int],
    keys: Sequence[str],
    palette: dict[str, str],
    *,
    title: str,
    height: int = 180,
) -> str:
    """Bars per day, stacked by key (largest series at the bottom)."""
    width = 720
    left, bottom, top = 36, 22, 8
    plot_h = height - bottom - top
    totals = [sum(counts.get((d, k), 0) for k in keys) for d in days]
    peak = max(totals, default=0)
    scale_max = _nice(peak)
    slot = (width - left - 4) / max(len(days), 1)
    bar_w = max(slot * 0.72, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        if scale_max * frac != int(scale_max * frac):
            continue  # no half counts on the axis
        label = int(scale_max * frac)
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="axis" text-anchor="end">{label}</text>')
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for key in keys:
            n = counts.get((day, key), 0)
            if not n:
                continue
            h = plot_h * n / scale_max if scale_max else 0
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.5):.1f}" '
                f'fill="{palette[key]}"><title>{escape(day)} · {escape(key)}: {n}</title></rect>'
            )
        if i % max(1, len(days) // 8) == 0 or i == len(days) - 1:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" class="axis" '
                f'text-anchor="middle">{escape(day[5:])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Sequence[Series]) -> str:
    items = "".join(
        f'<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect width="10" height="10" rx="2" '
        f'fill="{s.colour}"/></svg>{escape(s.key)} <b>{s.total}</b></li>'
        for s in series
    )
    return f'<ul class="legend">{items}</ul>'


def _nice(peak: int) -> int:
    """A round axis maximum at or above peak (1, 2, 5 x 10^n)."""
    if peak <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= peak:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= peak:
            return step * magnitude
    return 10 * magnitude
