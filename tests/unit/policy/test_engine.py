"""The engine: explanations, ordering, purity, and cost that does not follow the rule count."""

from __future__ import annotations

import builtins
import hashlib
import socket
from datetime import UTC, datetime
from typing import Any

import pytest

from endpoint_agent.policy import (
    Policy,
    Unapproved,
    compile_policy,
    evaluate,
    in_unapproved_scope,
    parse_policy,
)
from endpoint_agent.policy.index import ip_key
from endpoint_agent.policy.matchers import ProcessView
from endpoint_agent.types import Connection, Direction, Endpoint, Evidence, ProcessInfo, RuleAction, Snapshot

POLICY = """\
name: t
version: 7
rules:
  - {id: p2p-qbittorrent, category: p2p, action: block, process: {name: "qbittorrent*"}}
  - {id: p2p-bittorrent-ports, category: p2p, action: block,
     network: {local_port: "6881-6889", direction: [listen, inbound]}}
  - {id: watch-alice, action: report, process: {user: alice, cmdline: 'token=\\w+'}}
"""


def _proc(pid: int, name: str, **kw: Any) -> ProcessInfo:
    kw.setdefault("exe", f"/usr/bin/{name}")
    kw.setdefault("username", "bob")
    kw.setdefault("uid", 1001)
    return ProcessInfo(pid=pid, ppid=1, name=name, **kw)


def _listen(pid: int, port: int, ip: str = "127.0.0.1") -> Connection:
    family = "ipv6" if ":" in ip else "ipv4"
    return Connection(pid, family, "tcp", Endpoint(ip, port), None, "LISTEN", Direction.LISTEN)


def _snapshot(procs: list[ProcessInfo], conns: tuple[Connection, ...] = ()) -> Snapshot:
    return Snapshot(datetime(2024, 1, 1, tzinfo=UTC), {p.pid: p for p in procs}, conns)


def test_process_finding_explains_itself() -> None:
    compiled = compile_policy(parse_policy(POLICY, "t"))
    [finding] = evaluate(_snapshot([_proc(5, "qbittorrent")]), compiled)
    assert finding.reason == "process name 'qbittorrent' matched 'qbittorrent*' (rule p2p-qbittorrent)"
    assert finding.evidence == (Evidence("name", "qbittorrent*", "qbittorrent"),)
    assert (finding.rule_id, finding.category, finding.action, finding.connection) == (
        "p2p-qbittorrent",
        "p2p",
        RuleAction.BLOCK,
        None,
    )


def test_network_finding_explains_itself_and_counts() -> None:
    compiled = compile_policy(parse_policy(POLICY, "t"))
    conns = (_listen(6, 6881), _listen(6, 6882, "::1"), _listen(6, 8080))
    [finding] = evaluate(_snapshot([_proc(6, "innocent")], conns), compiled)
    assert finding.reason == (
        "connection 127.0.0.1:6881 (listen, tcp) matched local_port 6881-6889 "
        "(rule p2p-bittorrent-ports; 2 matching connections)"
    )
    assert finding.connection == conns[0]
    assert Evidence("local_port", "6881-6889", "6881") in finding.evidence
    assert Evidence("direction", "listen", "listen") in finding.evidence


def test_cmdline_evidence_quotes_only_the_match() -> None:
    compiled = compile_policy(parse_policy(POLICY, "t"))
    proc = _proc(7, "curl", username="alice", cmdline=("curl", "-H", "token=s3cr3t", "--password", "hunter2"))
    [finding] = evaluate(_snapshot([proc]), compiled)
    assert "token=s3cr3t" in finding.reason and "hunter2" not in finding.reason
    assert all("hunter2" not in e.value for e in finding.evidence)


def test_findings_are_ordered_by_pid_then_rule() -> None:
    compiled = compile_policy(parse_policy(POLICY, "t"))
    procs = [_proc(30, "qbittorrent"), _proc(10, "qbittorrent-nox"), _proc(20, "x")]
    findings = evaluate(_snapshot(procs, (_listen(30, 6881), _listen(20, 6889))), compiled)
    assert [(f.process.pid, f.rule_id) for f in findings] == [
        (10, "p2p-qbittorrent"),
        (20, "p2p-bittorrent-ports"),
        (30, "p2p-qbittorrent"),
        (30, "p2p-bittorrent-ports"),
    ]


def test_evaluate_is_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """No file, socket or process access during evaluation; same input, same output."""
    compiled = compile_policy(parse_policy(POLICY, "t"))
    snapshot = _snapshot([_proc(5, "qbittorrent"), _proc(6, "x")], (_listen(6, 6881),))
    before = repr(snapshot)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("I/O during evaluate")

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(socket, "socket", forbidden)
    monkeypatch.setattr("os.stat", forbidden)
    monkeypatch.setattr("os.listdir", forbidden)
    first = evaluate(snapshot, compiled)
    second = evaluate(snapshot, compiled)
    monkeypatch.undo()
    assert first == second and len(first) == 2
    assert repr(snapshot) == before


def test_empty_policy_and_empty_snapshot() -> None:
    compiled = compile_policy(parse_policy("name: t\nversion: 1\n", "t"))
    assert evaluate(_snapshot([_proc(1, "qbittorrent")]), compiled) == []
    assert evaluate(_snapshot([]), compile_policy(parse_policy(POLICY, "t"))) == []


def test_processes_with_missing_attributes_do_not_crash() -> None:
    compiled = compile_policy(parse_policy(POLICY, "t"))
    ghost = ProcessInfo(pid=9, ppid=0, name="", partial=True)
    conns = (Connection(9, "ipv4", "tcp", None, Endpoint("not-an-ip", 6881), "SYN_SENT", Direction.OUTBOUND),)
    assert evaluate(_snapshot([ghost], conns), compiled) == []


@pytest.mark.parametrize(
    ("proc", "in_scope"),
    [
        (ProcessInfo(pid=1, ppid=0, name="x", uid=1000, username="alice"), True),
        (ProcessInfo(pid=1, ppid=0, name="x", uid=999, username="svc"), False),
        (ProcessInfo(pid=1, ppid=0, name="x", uid=0, username="root"), False),
        (ProcessInfo(pid=1, ppid=0, name="x", uid=65534, username="nobody"), False),
        (ProcessInfo(pid=1, ppid=0, name="x", uid=None, username=None), False),
        (ProcessInfo(pid=1, ppid=2, name="kworker/0:1", uid=1000, kernel_thread=True), False),
        (ProcessInfo(pid=1, ppid=0, name="x", uid=1500, username="ci"), False),
    ],
)
def test_unapproved_scope(proc: ProcessInfo, in_scope: bool) -> None:
    assert in_unapproved_scope(proc, Unapproved(exclude_users=("ci",))) is in_scope


# --- cost does not follow the rule count (structure, not timing) --------------------------


def _synthetic_policy(n: int) -> Policy:
    rules: list[dict[str, Any]] = []
    for i in range(n):
        word = hashlib.sha256(str(i).encode()).hexdigest()[:10]
        kind = i % 8
        rule: dict[str, Any] = {"id": f"r{i}", "action": "block"}
        if kind == 0:
            rule["process"] = {"name": f"app{word}"}
        elif kind == 1:
            rule["process"] = {"name": f"{word}*"}
        elif kind == 2:
            rule["process"] = {"name": f"*{word}*"}
        elif kind == 3:
            rule["process"] = {"sha256": hashlib.sha256(word.encode()).hexdigest()}
        elif kind == 4:
            rule["process"] = {"path": f"/opt/{word}/*"}
        elif kind == 5:
            rule["process"] = {"cmdline": rf"--{word}\b"}
        elif kind == 6:
            rule["network"] = {"remote_port": 1024 + i % 60000}
        else:
            rule["network"] = {"remote_address": f"10.{i % 256}.{i // 256 % 256}.0/24"}
        rules.append(rule)
    return Policy.model_validate({"name": "synthetic", "version": 1, "rules": rules})


def test_candidates_per_process_stay_few_with_10000_rules() -> None:
    compiled = compile_policy(_synthetic_policy(10_000))
    assert compiled.stats["residual_patterns"] == 0
    procs = [
        _proc(
            i,
            name,
            cmdline=(f"/usr/bin/{name}", "--type=renderer", "--lang=en-US", f"--user-data-dir=/home/a/{i}"),
        )
        for i, name in enumerate(
            ["chrome", "bash", "python3", "systemd", "gnome-shell", "code", "Xorg", "sshd"]
        )
    ]
    sizes = [len(compiled.process_index.candidates(ProcessView.of(p))) for p in procs]
    assert max(sizes) <= 3, sizes
    conn = Connection(
        1,
        "ipv4",
        "tcp",
        Endpoint("10.0.0.5", 40000),
        Endpoint("10.7.0.9", 443),
        "ESTABLISHED",
        Direction.OUTBOUND,
    )
    assert len(compiled.network_index.candidates(conn, ip_key("10.7.0.9"))) <= 3
