"""`endpoint-agent violations`: what the store holds, as a table or NDJSON with the contract keys."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

from endpoint_agent.report.listing import show_violations
from endpoint_agent.report.store import NewEvent, ViolationStore
from endpoint_agent.settings import AgentSettings
from endpoint_agent.types import Connection, Direction, Endpoint
from tests.support.contract import CONTRACT_KEYS
from tests.support.violations import LISTING_T0, SHA, record, violation

T0 = LISTING_T0  # the time `violation` gives its records


def test_ndjson_has_the_contract_keys(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    conn = Connection(
        4242, "ipv4", "tcp", Endpoint("127.0.0.1", 6881), Endpoint("127.0.0.1", 51413), "ESTABLISHED",
        Direction.OUTBOUND,
    )  # fmt: skip
    with ViolationStore.open(settings.store_path) as store:
        record(store, violation("p2p"))
        record(store, violation("p2p-ports", connection=conn))
        store.append(
            [NewEvent(str(uuid.uuid4()), "agent", T0, {"type": "circuit_open", "detail": {}})]
        )  # not a violation
    out = io.StringIO()
    assert show_violations(settings, as_json=True, out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["rule_id"] for r in lines] == ["p2p", "p2p-ports"]
    for r in lines:
        assert r.keys() >= CONTRACT_KEYS
        assert r["action"] == "killed" and r["detected_at"] == "2024-05-01T12:00:00Z"
        assert r["last_seen"] == "2024-05-01T12:05:00Z" and r["uploaded"] is False
        assert (r["severity"], r["sha256"], r["ppid"], r["parent_name"]) == ("high", SHA, 1000, "bash")
        assert r["cmdline"] == "/opt/qbittorrent/qbittorrent --profile=work"
        assert r["evidence"] == [{"attribute": "name", "pattern": "qbittorrent*", "value": "qbittorrent"}]
        assert (r["hostname"], r["os"]) == ("ws-test", "Debian GNU/Linux 13 (trixie)")
    assert lines[1]["connection"] == {
        "laddr": "127.0.0.1:6881", "raddr": "127.0.0.1:51413", "proto": "tcp", "status": "ESTABLISHED",
        "direction": "outbound",
    }  # fmt: skip


def test_table(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    with ViolationStore.open(settings.store_path) as store:
        record(store, violation("p2p"))
    out = io.StringIO()
    assert show_violations(settings, as_json=False, out=out) == 0
    text = out.getvalue()
    assert "killed" in text and "qbittorrent" in text and "1 violation(s)." in text


def test_nothing_recorded_yet(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path / "never")
    out = io.StringIO()
    assert show_violations(settings, as_json=True, out=out) == 0
    assert out.getvalue() == ""
    show_violations(settings, as_json=False, out=out)
    assert "No violations recorded" in out.getvalue()
