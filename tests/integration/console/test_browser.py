"""The console in Debian's chromium: sign-in, roles, CSRF, filters, triage, drill-down, downloads.

Every test saves a screenshot of the page it checked under its artifacts directory.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tests.integration.console.conftest import sign_in
from tests.support.console import PASSWORD, Console, figures


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def test_sign_in_and_out(page: Any, console: Console, artifacts: Path) -> None:
    page.goto("/")
    assert page.url.endswith("/signin")  # nothing without a session
    sign_in(page, "alice", PASSWORD)
    page.wait_for_url(console.url + "/")
    assert page.locator("h1").first.inner_text() == "Overview"
    assert "alice" in page.locator("form.who").inner_text()
    cookie = next(c for c in page.context.cookies() if c["name"] == "endpoint_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain http on loopback; Secure is set when served over https
    shot(page, artifacts, "overview")
    page.click("form.who button")
    page.wait_for_url(console.url + "/signin")
    assert not [c for c in page.context.cookies() if c["name"] == "endpoint_session"]
    page.goto("/violations")
    assert page.url.endswith("/signin")
    shot(page, artifacts, "signed-out")


def test_wrong_password_then_lock_out(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "rita", "not the password")
    assert "Wrong user name or password" in page.locator("p.error").inner_text()
    sign_in(page, "nobody-here", PASSWORD)  # an unknown name gets the same answer
    assert "Wrong user name or password" in page.locator("p.error").inner_text()
    for _ in range(5):
        sign_in(page, "lockme", "guessing")
    sign_in(page, "lockme", PASSWORD)  # even the right password waits now
    error = page.locator("p.error").inner_text()
    assert "Too many failed sign-ins" in error, error
    assert not [c for c in page.context.cookies() if c["name"] == "endpoint_session"]
    shot(page, artifacts, "locked-out")


def test_reader_cannot_triage(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "rita", PASSWORD)
    page.goto("/violations")
    assert page.locator("input[name=violation]").count() == 0
    assert "can read violations" in page.content()
    shot(page, artifacts, "reader-violations")
    # The form is not offered; posting it anyway (with a valid token) is refused and changes nothing.
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    item = console.api("/violations", limit=1)["items"][0]
    response = page.request.post(
        "/violations/triage",
        form={
            "csrf_token": token,
            "violation": f"{item['host']}/{item['event_id']}",
            "state": "acknowledged",
        },
        max_redirects=0,
    )
    assert response.status == 403 and "may read but not triage" in response.text()
    page.set_content(response.text())
    shot(page, artifacts, "reader-refused")
    again = console.api("/violations", limit=1)["items"][0]
    assert again["triage"] is None


def test_forged_forms_without_csrf_token_are_refused(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "alice", PASSWORD)
    page.goto("/violations")
    item = console.api("/violations", limit=1)["items"][0]
    target = f"{item['host']}/{item['event_id']}"
    for form in (
        {"violation": target, "state": "false_positive"},
        {"csrf_token": "forged", "violation": target},
    ):
        response = page.request.post("/violations/triage", form=form, max_redirects=0)
        assert response.status == 403 and "security token" in response.text()
    out = page.request.post("/signout", form={}, max_redirects=0)
    assert out.status == 403  # signing someone out needs the token too
    assert console.api("/violations", limit=1)["items"][0]["triage"] is None
    page.set_content(response.text())
    shot(page, artifacts, "forged-form-refused")
    fresh = page.context.browser.new_context(base_url=console.url)
    try:
        forged = fresh.request.post("/signin", form={"name": "alice", "password": PASSWORD}, max_redirects=0)
        assert forged.status == 403  # the sign-in form is protected as well (double-submit token)
    finally:
        fresh.close()


def test_filters_and_triage(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "alice", PASSWORD)
    page.goto("/violations")
    page.fill("input[name=rule_id]", "p2p-qbittorrent")
    page.select_option("select[name=action]", "killed")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/violations?**")
    rows = page.locator("table.violations tbody tr")
    api = console.api("/summary", since="30d", rule_id="p2p-qbittorrent", action="killed")
    assert api["total"] > 2
    assert rows.count() == api["total"]  # fewer than a page
    assert figures(page.content())["violations.total"] == str(api["total"])
    for i in range(rows.count()):
        text = rows.nth(i).inner_text()
        assert "p2p-qbittorrent" in text and "killed" in text
    page.locator("input[name=violation]").nth(0).check()
    page.locator("input[name=violation]").nth(1).check()
    page.select_option("select[name=state]", "escalated")
    page.fill("input[name=note]", "INC-4711 user keeps restarting it")
    page.click(".triagebar button")
    page.wait_for_url("**message=**")
    assert "2 violation(s) marked escalated" in page.locator("p.ok").inner_text()
    page.goto("/violations?since=30d&triage=escalated")
    assert page.locator("table.violations tbody tr").count() == 2
    assert page.locator(".tri-escalated").count() == 2
    shot(page, artifacts, "escalated")
    escalated = console.api("/violations", triage="escalated")["items"]
    assert len(escalated) == 2
    assert {i["triage"]["note"] for i in escalated} == {"INC-4711 user keeps restarting it"}
    assert {i["triage"]["by"] for i in escalated} == {"alice"}
    page.goto("/audit?action=triage")
    assert page.locator("table.list tbody tr").count() >= 2
    assert "alice" in page.locator("table.list tbody").inner_text()
    shot(page, artifacts, "audit-triage")


def test_drill_down_to_host_and_rule(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "rita", PASSWORD)
    page.goto("/")
    page.locator("table.counts a", has_text="ws-alpha").first.click()
    page.wait_for_url("**/hosts/**")
    assert page.locator("h1").first.inner_text().startswith("ws-alpha")
    body = page.locator("main").inner_text()
    assert "0.1.0" in body and "v1" in body and "enforce" in body
    host_total = console.api("/summary", since="30d", host="ws-alpha")["total"]
    assert figures(page.content())["violations.total"] == str(host_total)
    shot(page, artifacts, "host")
    page.goto(f"/hosts/{console.hosts['ws-bravo']}")
    assert "circuit_open" in page.locator("main").inner_text()  # agent events are in the timeline
    assert "break-glass file present" in page.locator("main").inner_text()
    shot(page, artifacts, "host-held-in-monitor")
    page.locator("table a", has_text="p2p-qbittorrent").first.click()
    page.wait_for_url("**/rules/p2p-qbittorrent**")
    assert "qbittorrent*" in page.locator("pre.code").inner_text()  # the rule's text, from policy v1
    rule_total = console.api("/summary", since="30d", rule_id="p2p-qbittorrent")["total"]
    assert figures(page.content())["violations.total"] == str(rule_total)
    shot(page, artifacts, "rule")
    page.goto("/rules")
    assert "crypto-miner" in page.locator("section.card", has_text="No hits").inner_text()
    shot(page, artifacts, "rules")


def test_download_csv_and_ndjson(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "rita", PASSWORD)
    page.goto("/violations?since=30d&category=p2p")
    expected = console.api("/summary", since="30d", category="p2p")["total"]
    with page.expect_download() as info:
        page.click("text=CSV")
    path = info.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert len(rows) == expected
    assert {r["category"] for r in rows} == {"p2p"}
    assert {"detected_at", "hostname", "rule_id", "action", "triage_state"} <= set(rows[0])
    with page.expect_download() as info:
        page.click("text=NDJSON")
    lines = Path(info.value.path()).read_text().splitlines()
    items = [json.loads(line) for line in lines]
    api_items = console.api("/violations", since="30d", category="p2p", limit=1000)["items"]
    assert sorted(i["event_id"] for i in items) == sorted(i["event_id"] for i in api_items)
    shot(page, artifacts, "violations-p2p")


def test_admin_publishes_a_signed_envelope_and_rolls_out(
    page: Any, console: Console, artifacts: Path
) -> None:
    from tests.support.console import POLICY_V1

    envelope = artifacts / "policy-v2.json"
    envelope.write_bytes(console.server.sign(POLICY_V1.replace("version: 1", "version: 2")))
    sign_in(page, "rita", PASSWORD)
    page.goto("/policies")
    assert page.locator("input[type=file]").count() == 0  # readers see versions, not the forms
    page.click("form.who button")
    sign_in(page, "adam", PASSWORD)
    page.goto("/policies")
    page.set_input_files("input[name=envelope]", str(envelope))
    page.fill("input[name=rollout]", "25")
    page.click("form[action='/policies/publish'] button")
    page.wait_for_url("**/policies?**")
    assert "published version 2 to 25% of hosts" in page.locator("p.ok").inner_text()
    row = page.locator("table.list tbody tr").first.inner_text()
    assert "v2" in row and "adam" in row and "25%" in row
    page.fill("form[action='/policies/rollout'] input[name=percent]", "100")
    page.click("form[action='/policies/rollout'] button")
    page.wait_for_url("**/policies?**")
    assert "100%" in page.locator("table.list tbody tr").first.inner_text()
    shot(page, artifacts, "policies")
    tampered = json.loads(envelope.read_text())
    tampered["payload"] = tampered["payload"][:-8] + "AAAAAAA="
    envelope.write_text(json.dumps(tampered))
    page.set_input_files("input[name=envelope]", str(envelope))
    page.click("form[action='/policies/publish'] button")
    page.wait_for_url("**/policies?**")
    assert "envelope rejected" in page.locator("p.error").inner_text()
    page.goto("/audit")
    text = page.locator("table.list tbody").inner_text()
    assert "publish" in text and "rollout" in text and "adam" in text
    shot(page, artifacts, "audit")
    audit = console.api("/audit", action="publish")["items"]
    assert audit[0]["actor"] == "adam" and audit[0]["target"] == "policy version 2"


def test_report_page_prints_the_api_figures(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "rita", PASSWORD)
    page.goto("/report?since=30d")
    report = console.api("/report", since="30d")
    shown = figures(page.content())
    assert shown["violations.total"] == str(report["violations"]["total"])
    assert shown["fleet.enrolled"] == str(report["fleet"]["enrolled"])
    shot(page, artifacts, "report")
    page.emulate_media(media="print")
    assert not page.locator("header.top").is_visible()  # print styles drop the navigation
    assert page.locator("h1.printonly").is_visible()
    shot(page, artifacts, "report-print")
    page.emulate_media(media="screen")
    with page.expect_download() as info:
        page.goto("/report?since=30d")
        page.click("text=CSV")
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    assert {"section": "violations", "key": "total", "value": str(report["violations"]["total"])} in rows


def test_bad_addresses_get_a_page_not_a_traceback(page: Any, console: Console, artifacts: Path) -> None:
    sign_in(page, "rita", PASSWORD)
    for path, status, text in (
        ("/violations?since=yesterday-ish", 400, "neither an ISO 8601 time"),
        ("/violations?triage=maybe", 400, "triage"),
        ("/hosts/no-such-host", 404, "no host"),
        ("/violations?before=%00%ff", 400, "cursor"),
    ):
        response = page.goto(path)
        assert response is not None and response.status == status, path
        assert text in page.locator("p.error").inner_text(), path
    shot(page, artifacts, "bad-address")
