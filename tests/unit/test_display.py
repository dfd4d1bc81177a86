"""One escaping function (display.printable) for log lines, tables and notifications."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from endpoint_agent.display import printable
from endpoint_agent.enforce.notify import Notification
from endpoint_agent.logfmt import TextLineFormatter
from endpoint_agent.report.listing import show_violations
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.scan import print_table
from endpoint_agent.service import write_status
from endpoint_agent.settings import AgentSettings
from endpoint_agent.status import show_status
from endpoint_agent.types import Outcome
from tests.support.violations import record, violation

HOSTILE = "q\x1b[2J\x1b]0;pwned\x07\nFORGED ERROR root: \u202egpj.exe\udcff\r\t"


def no_control_characters(text: str) -> bool:
    return all(ch.isprintable() for line in text.splitlines() for ch in line)


def test_every_control_character_becomes_a_visible_escape() -> None:
    assert printable(HOSTILE) == (
        "q\\x1b[2J\\x1b]0;pwned\\x07\\nFORGED ERROR root: \\u202egpj.exe\\udcff\\r\\t"
    )
    assert printable("qBittörrent 下载 v4.6") == "qBittörrent 下载 v4.6"  # letters of any script stay
    assert printable(42) == "42" and printable("\u2028\x85") == "\\u2028\\x85"


def test_a_log_line_stays_one_line_whatever_the_name() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextLineFormatter())
    log = logging.getLogger("test.display")
    log.addHandler(handler)
    # Only this handler: pytest's own capture would carry the raw name (a lone surrogate) into the
    # test report, which a parallel run cannot send between its processes.
    log.propagate = False
    try:
        log.warning("killed pid %d (%s)", 7, HOSTILE)
        try:
            raise ValueError(f"bad name {HOSTILE}")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    lines = out.getvalue().splitlines()
    assert "killed pid 7 (q\\x1b[2J" in lines[0] and no_control_characters(out.getvalue())
    assert not any(line.startswith("FORGED") for line in lines)
    assert all(line.startswith("| ") for line in lines[2:])  # the traceback, marked


def test_tables_show_no_terminal_escapes(tmp_path: Path) -> None:
    hostile = violation("p2p").model_copy(
        update={"process_name": HOSTILE, "username": HOSTILE, "reason": f"name {HOSTILE!s} matched"}
    )
    settings = AgentSettings(state_dir=tmp_path)
    with ViolationStore.open(settings.store_path) as store:
        record(store, hostile)
    out = io.StringIO()
    show_violations(settings, as_json=False, out=out)
    print_table([hostile], out)
    text = out.getvalue()
    assert "\x1b" not in text and no_control_characters(text)
    assert len(text.splitlines()) == 6  # two headers, two rows, two totals


def test_notification_title_and_body_are_escaped() -> None:
    n = Notification(
        "alice", 1000, 7, HOSTILE, "p2p", Outcome.KILLED, f"Stop {HOSTILE}", f"https://x/{HOSTILE}"
    )
    assert "\x1b" not in n.title and "\n" not in n.title and n.title.startswith("q\\x1b")
    message, url = n.body.split("\n")  # the one newline is ours, between message and link
    assert no_control_characters(message) and no_control_characters(url)


def test_status_lines_show_no_terminal_escapes(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    data = {"pid": 1, "state": "stopped", "last_error": f"CollectError: cannot read /tmp/{HOSTILE}",
            "hashing": {"wanted": True, "files_hashed": 3, "queued": 40, "deferred": 1}}  # fmt: skip
    write_status(settings.status_path, data)
    out = io.StringIO()
    show_status(settings, as_json=False, out=out)
    text = out.getvalue()
    assert "\x1b" not in text and no_control_characters(text)
    assert "last error: CollectError: cannot read /tmp/q\\x1b[2J" in text
    assert "hashing: 3 files hashed, 40 queued, 1 deferred (rewritten)" in text
