"""Every figure a console page shows equals what the API returns for the same filter,
on SQLite and PostgreSQL; and the compliance report prints to a PDF that says the same."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from tests.support.ci_skip import require
from tests.support.console import CHROMIUM, CHROMIUM_ARGS, Console, chromium_or_skip, figures, seeded_console
from tests.support.server import fresh_pg_database, pg_url_or_skip, subprocess_env


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def any_db_console(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Console]:
    with ExitStack() as stack:
        db_url = (
            stack.enter_context(fresh_pg_database(pg_url_or_skip())) if request.param == "postgres" else None
        )
        yield stack.enter_context(seeded_console(tmp_path_factory.mktemp(request.param), db_url=db_url))


def _fmt(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def test_overview_and_report_figures_equal_the_api(any_db_console: Console) -> None:
    con = any_db_console
    with closing(con.sign_in_http("rita")) as web:
        pages = {path: figures(web.get(path, params={"since": "30d"}).text) for path in ("/", "/report")}
    report = con.api("/report", since="30d")
    fleet, viol = report["fleet"], report["violations"]
    assert viol["total"] == 36 and fleet["enrolled"] == 3  # the seed, so the comparison is not vacuous
    for shown in pages.values():
        assert shown["violations.total"] == _fmt(viol["total"])
        assert shown["violations.open"] == _fmt(viol["open"])
        for key in ("enrolled", "reporting", "stale", "held_in_monitor"):
            assert shown[f"fleet.{key}"] == _fmt(fleet[key]), key
        assert shown["fleet.enforcing_percent"] == f"{fleet['enforcing_percent']}%"
        assert shown["fleet.on_current_policy_percent"] == f"{fleet['on_current_policy_percent']}%"
    overview, printed = pages["/"], pages["/report"]
    for row in viol["by_rule"]:
        assert overview[f"rule:{row['rule_id']}"] == _fmt(row["count"])
    for row in viol["top_hosts"]:
        assert overview[f"host:{row['host']}"] == _fmt(row["count"])
        assert printed[f"top_host:{row['host']}"] == _fmt(row["count"])
    for section, key in (("by_category", "category"), ("by_action", "action"), ("by_triage", "triage")):
        for row in viol[section]:
            assert printed[f"{key}:{row[key]}"] == _fmt(row["count"])
    assert printed["detection_to_stop.stopped"] == _fmt(report["detection_to_stop"]["stopped"])
    assert sum(d["count"] for d in viol["per_day"]) == viol["total"]


def test_list_host_and_rule_pages_equal_the_summary(any_db_console: Console) -> None:
    con = any_db_console
    filters = [
        {"since": "30d"},
        {"since": "30d", "category": "p2p", "action": "killed"},
        {"since": "7d", "host": "ws-bravo"},
        {"since": "30d", "triage": "open", "rule_id": "remote-anydesk"},
    ]
    with closing(con.sign_in_http("rita")) as web:
        for flt in filters:
            shown = figures(web.get("/violations", params=flt).text)
            api = con.api("/summary", **flt)
            assert shown["violations.total"] == _fmt(api["total"]), flt
            assert shown["violations.open"] == _fmt(api["open"]), flt
        host = figures(web.get(f"/hosts/{con.hosts['ws-alpha']}", params={"since": "30d"}).text)
        api = con.api("/summary", since="30d", host=con.hosts["ws-alpha"])
        assert host["violations.total"] == _fmt(api["total"])
        for row in api["by_rule"]:
            assert host[f"rule:{row['rule_id']}"] == _fmt(row["count"])
        rules = figures(web.get("/rules", params={"since": "30d"}).text)
        api = con.api("/summary", since="30d")
        for row in api["by_rule"]:
            assert rules[f"rule:{row['rule_id']}"] == _fmt(row["count"])
        assert rules["rule:crypto-miner"] == "0"  # in the policy, never hit
        versions = figures(web.get("/policies").text)
        assert versions["hosts_on:1"] == _fmt(con.api("/report")["fleet"]["on_current_policy"])


def test_report_cli_csv_and_printed_pdf(any_db_console: Console, tmp_path: Path) -> None:
    con = any_db_console
    env = subprocess_env({"ENDPOINT_ADMIN_TOKEN": con.server.reader_token})
    base = [sys.executable, "-m", "endpoint_admin", "report", "--server", con.url, "--since", "30d"]
    out = subprocess.run([*base, "--format", "csv"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {(r["section"], r["key"]): r["value"] for r in csv.DictReader(io.StringIO(out.stdout))}
    report = con.api("/report", since="30d")
    assert rows[("violations", "total")] == str(report["violations"]["total"])
    assert rows[("fleet", "enrolled")] == "3"
    assert rows[("by_category", "p2p")] == str(
        next(c["count"] for c in report["violations"]["by_category"] if c["category"] == "p2p")
    )
    html = tmp_path / "report.html"
    out = subprocess.run(
        [*base, "--format", "html", "--out", str(html)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    document = html.read_text()
    assert "<script" not in document and 'src="http' not in document and 'href="http' not in document
    chromium_or_skip()
    if shutil.which("pdftotext") is None:
        require("pdftotext is not installed (apt-get install poppler-utils)")
    pdf = tmp_path / "report.pdf"
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--no-pdf-header-footer"]
    subprocess.run(
        [*cmd, f"--print-to-pdf={pdf}", html.as_uri()],
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
        check=True,
    )
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "Endpoint policy compliance report" in text
    assert "Hosts enrolled" in text and "Open (not triaged)" in text
    total_line = next(line for line in text.splitlines() if line.strip().startswith("Total"))
    assert total_line.split()[-1] == str(report["violations"]["total"])
    assert "ws-alpha" in text and "Time from detection to stop" in text
