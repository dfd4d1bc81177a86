"""Jinja2 templates of the console (autoescaped), with the filters and charts the pages share."""

from __future__ import annotations

from datetime import UTC, date, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from server_stub.console import charts
from server_stub.reporting import Report, report_json, share
from server_stub.store.stats import DayCount

_PACKAGE = resources.files("server_stub.console")
_env = Environment(
    loader=FileSystemLoader(str(_PACKAGE / "templates")),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        value = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    secs = int((now - value).total_seconds())
    if secs < 90:
        return f"{max(secs, 0)} s ago"
    if secs < 5400:
        return f"{secs // 60} min ago"
    if secs < 172800:
        return f"{secs // 3600} h ago"
    return f"{secs // 86400} days ago"


def _num(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


_env.filters["when"] = _when
_env.filters["num"] = _num
_env.globals["ago"] = _ago
_env.globals["share"] = share


def css() -> str:
    return (_PACKAGE / "static" / "console.css").read_text(encoding="utf-8")


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)


def day_chart(per_day: list[DayCount], first: date, last: date, by: str, title: str) -> Markup:
    """Stacked bars per day by `category` or `action`, with its legend."""
    days = charts.days_between(first, last)
    counts: dict[tuple[str, str], int] = {}
    totals: dict[str, int] = {}
    for d in per_day:
        key = d.category if by == "category" else d.action
        counts[(d.day, key)] = counts.get((d.day, key), 0) + d.count
        totals[key] = totals.get(key, 0) + d.count
    keys = sorted(totals, key=lambda k: (-totals[k], k))
    palette = charts.colours(keys, charts.ACTION_COLOURS if by == "action" else None)
    svg = charts.stacked_bars(days, counts, keys, palette, title=title)
    legend = charts.legend([charts.Series(k, palette[k], totals[k]) for k in keys])
    return Markup(svg + legend)  # built from escaped parts only


def report_context(r: Report) -> dict[str, Any]:
    first = (r.since or r.generated_at).date()
    last = (r.until or r.generated_at).date()
    return {
        "r": r,
        "data": report_json(r),
        "by_category": day_chart(r.per_day, first, last, "category", "violations per day by category"),
        "by_action": day_chart(r.per_day, first, last, "action", "violations per day by action"),
    }


def render_report_document(r: Report) -> str:
    """The report as one self-contained, printable HTML document (CSS inline, no links out)."""
    return render("report_document.html", css=Markup(css()), **report_context(r))
