"""The compliance report and the console's overview: one set of figures, for the API and the pages.

`build_report` asks the database for every figure of a period; `report_json` is what
`GET /api/v1/report` returns and `report_csv` its CSV form. The console renders the same
`Report`, so a page and the API cannot disagree.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from endpoint_contract.timestamps import iso_utc_or_none
from server_stub.store import EventFilter, Store
from server_stub.store.stats import DayCount, Fleet, StopTimes, Summary

TOP_HOSTS = 10


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: datetime
    since: datetime | None
    until: datetime | None
    fleet: Fleet
    summary: Summary
    per_day: list[DayCount]
    stop_times: StopTimes


def current_version(store: Store) -> int | None:
    """The newest published version that was not rolled back."""
    for v in store.policies.versions():
        if v.rolled_back_at is None:
            return v.version
    return None


def build_report(store: Store, flt: EventFilter, now: datetime, stale_after: float) -> Report:
    return Report(
        generated_at=now,
        since=flt.since,
        until=flt.until,
        fleet=store.stats.fleet(now, stale_after, current_version(store)),
        summary=store.stats.summary(flt, top=TOP_HOSTS),
        per_day=store.stats.per_day(flt),
        stop_times=store.stats.stop_times(flt),
    )


def iso(dt: datetime | None) -> str | None:
    return iso_utc_or_none(dt)


def share(part: int, whole: int) -> float:
    """Percent with one decimal; 0 of 0 is 0."""
    return round(100.0 * part / whole, 1) if whole else 0.0


def report_json(r: Report) -> dict[str, Any]:
    f, s = r.fleet, r.summary
    return {
        "generated_at": iso(r.generated_at),
        "since": iso(r.since),
        "until": iso(r.until),
        "fleet": {
            "enrolled": f.enrolled,
            "reporting": f.reporting,
            "stale": f.stale,
            "enforcing": f.enforcing,
            "monitor": f.monitor,
            "enforcing_percent": share(f.enforcing, f.enrolled),
            "current_policy_version": f.current_version,
            "on_current_policy": f.on_current,
            "on_current_policy_percent": share(f.on_current, f.enrolled),
            "by_policy_version": [{"policy_version": c.key, "hosts": c.count} for c in f.versions],
            "held_in_monitor": f.held_total,
            "held_hosts": [{"host": h.host_id, "hostname": h.hostname, "reason": h.reason} for h in f.held],
        },
        "violations": {
            "total": s.total,
            "open": s.open,
            "by_category": [{"category": c.key, "count": c.count} for c in s.by_category],
            "by_action": [{"action": c.key, "count": c.count} for c in s.by_action],
            "by_rule": [{"rule_id": c.key, "count": c.count} for c in s.by_rule],
            "by_triage": [{"triage": c.key, "count": c.count} for c in s.by_triage],
            "top_hosts": [{"host": c.key, "hostname": c.label, "count": c.count} for c in s.by_host],
            "per_day": [
                {"day": d.day, "category": d.category, "action": d.action, "count": d.count}
                for d in r.per_day
            ],
        },
        "detection_to_stop": {
            "stopped": r.stop_times.stopped,
            "average_seconds": r.stop_times.average_seconds,
        },
    }


def report_csv(r: Report) -> str:
    """section,key,value rows: easy to paste into a spreadsheet or an audit evidence folder."""
    data = report_json(r)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "key", "value"])
    w.writerow(["period", "since", data["since"] or ""])
    w.writerow(["period", "until", data["until"] or data["generated_at"]])
    fleet = data["fleet"]
    for key in (
        "enrolled",
        "reporting",
        "stale",
        "enforcing",
        "enforcing_percent",
        "current_policy_version",
        "on_current_policy",
        "on_current_policy_percent",
        "held_in_monitor",
    ):
        w.writerow(["fleet", key, "" if fleet[key] is None else fleet[key]])
    v = data["violations"]
    w.writerow(["violations", "total", v["total"]])
    w.writerow(["violations", "open", v["open"]])
    for section, key in (("by_category", "category"), ("by_action", "action"), ("by_triage", "triage")):
        for row in v[section]:
            w.writerow([section, row[key], row["count"]])
    for row in v["top_hosts"]:
        w.writerow(["top_hosts", row["hostname"] or row["host"], row["count"]])
    stop = data["detection_to_stop"]
    for key in ("stopped", "average_seconds"):
        w.writerow(["detection_to_stop", key, "" if stop[key] is None else stop[key]])
    return out.getvalue()
