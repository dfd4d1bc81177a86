"""The violation record built from a finding: forensic fields, bounds, and text that was not UTF-8."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from endpoint_agent.report.violation import HostFacts, build_violation, host_facts
from endpoint_agent.types import Evidence, Finding, Outcome, ProcessInfo, RuleAction, Severity
from endpoint_contract.events import TEXT_MAX, Violation
from endpoint_contract.text import unescape_bytes
from tests.support.contract import CONTRACT_KEYS

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
HOST = HostFacts("ws-1", "Debian GNU/Linux 13 (trixie)")


def build(proc: ProcessInfo, **finding: object) -> Violation:
    f = Finding(
        rule_id="r",
        category="p2p",
        action=RuleAction.BLOCK,
        process=proc,
        reason=f"process name {proc.name!r} matched",
        evidence=(Evidence("name", "q*", proc.name),),
        severity=Severity.HIGH,
        **finding,  # type: ignore[arg-type]
    )
    return build_violation(f, Outcome.WOULD_BLOCK, event_id="0" * 8 + "-0000-4000-8000-" + "0" * 12,
                           detected_at=T0, policy_version=2, host=HOST)  # fmt: skip


def test_every_contract_key_and_the_forensic_fields() -> None:
    proc = ProcessInfo(
        pid=42, ppid=7, name="qbittorrent", exe="/usr/bin/qbittorrent", cmdline=("qbittorrent", "-d"),
        username="alice", sha256="AB" * 32, parent_name="bash", create_time=12.5,
    )  # fmt: skip
    out = build(proc).to_json()
    assert out.keys() >= CONTRACT_KEYS and "connection" not in out
    assert (out["sha256"], out["cmdline"], out["ppid"], out["parent_name"]) == (
        "ab" * 32,
        "qbittorrent -d",
        7,
        "bash",
    )
    assert out["evidence"] == [{"attribute": "name", "pattern": "q*", "value": "qbittorrent"}]
    assert (out["severity"], out["hostname"], out["os"]) == ("high", "ws-1", "Debian GNU/Linux 13 (trixie)")
    assert out["detected_at"] == "2030-01-02T03:04:05Z"
    assert Violation.model_validate_json(build(proc).to_json_text()) == build(proc)  # what the server reads


def test_unknown_forensics_are_null_not_missing() -> None:
    out = build(ProcessInfo(pid=42, ppid=0, name="x")).to_json()
    assert out["sha256"] is None and out["cmdline"] is None and out["parent_name"] is None
    assert out["exe"] is None and out["username"] is None


def test_bytes_that_are_not_utf8_are_escaped_at_collection_and_recoverable() -> None:
    raw_exe = b"/tmp/bad\xff/qbit\\torrent"
    proc = ProcessInfo(
        pid=42, ppid=1, name=os.fsdecode(b"qbit\xfe"), exe=os.fsdecode(raw_exe),
        cmdline=(os.fsdecode(raw_exe), os.fsdecode(b"caf\xe9")), username="alice",
    )  # fmt: skip
    assert proc.name == "qbit\\xfe" and proc.exe == "/tmp/bad\\xff/qbit\\\\torrent"
    out = build(proc).to_json()
    assert unescape_bytes(out["exe"]) == raw_exe and out["cmdline"].endswith("caf\\xe9")
    text = build(proc).to_json_text()
    text.encode("utf-8")  # no lone surrogate anywhere: valid UTF-8, storable and sendable
    assert "\\ud" not in text


def test_oversized_text_is_clipped_to_the_contract() -> None:
    proc = ProcessInfo(pid=42, ppid=1, name="n" * 20_000, exe="/" + "e" * 20_000, username="u" * 1000)
    v = build(proc)
    assert len(v.process_name) <= TEXT_MAX and len(v.exe or "") <= TEXT_MAX and len(v.username or "") <= 256
    assert "cut" in v.process_name


def test_host_facts_name_this_machine() -> None:
    facts = host_facts()
    assert facts.hostname and facts.os and facts is host_facts()
