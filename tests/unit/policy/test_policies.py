"""The shipped policies: valid, in sync with schema.json, quiet on a plain Linux machine, and
loud on real P2P stand-ins."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from endpoint_agent.collect.behaviour import BehaviourTracker
from endpoint_agent.policy import Mode, UnapprovedAction, compile_policy, evaluate, load_policy_file
from endpoint_agent.policy.schema import render_schema
from endpoint_agent.types import Connection, Direction, Endpoint, ProcessInfo, RuleAction, Snapshot
from tests.support import Listen, SpawnFn
from tests.support.machine import machine_snapshot

POLICIES = Path(__file__).resolve().parents[3] / "policies"
ALL_FILES = sorted(POLICIES.rglob("*.yaml"))


def test_schema_json_is_generated_from_the_models() -> None:
    """Regenerate with `make schema` (python -m endpoint_agent.policy.schema > policies/schema.json)."""
    assert (POLICIES / "schema.json").read_text() == render_schema()


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(POLICIES)))
def test_shipped_policies_load_and_compile(path: Path) -> None:
    policy = load_policy_file(path)
    compiled = compile_policy(policy)
    assert compiled.rules and compiled.stats["residual_patterns"] == 0
    assert policy.mode is Mode.MONITOR  # shipped files never stop anything until an admin says so


def test_default_policy_is_a_monitor_mode_p2p_baseline() -> None:
    policy = load_policy_file(POLICIES / "default.yaml")
    assert policy.unapproved.action is UnapprovedAction.OFF
    by_category: dict[str, list[RuleAction]] = {}
    for rule in policy.rules:
        by_category.setdefault(rule.category or "", []).append(rule.action)
    # file sharing is blocked, but for the approved software it allows; anonymity networks reported
    assert set(by_category) == {"p2p", "anonymity"}
    assert by_category["p2p"].count(RuleAction.ALLOW) == 1
    assert {a for a in by_category["p2p"] if a is not RuleAction.ALLOW} == {RuleAction.BLOCK}
    assert len(by_category["p2p"]) >= 25
    assert set(by_category["anonymity"]) == {RuleAction.REPORT}
    p2p = [r for r in policy.rules if r.category in ("p2p", "anonymity") and r.action is not RuleAction.ALLOW]
    names = {n.lower() for r in p2p if r.process and r.process.name for n in r.process.name}
    for client in (
        "qbittorrent",
        "transmission-gtk",
        "transmission-qt",
        "transmission-daemon",
        "transmission-cli",
        "deluge",
        "deluged",
        "deluge-gtk",
        "utorrent.exe",
        "bittorrent.exe",
        "vuze",
        "azureus",
        "biglybt",
        "tixati",
        "aria2c",
        "rtorrent",
        "ctorrent",
        "emule.exe",
        "amule",
        "amuled",
        "frostwire",
        "soulseekqt",
        "nicotine",
        "ktorrent",
        "tribler",
        "limewire",
        "wireshare",
        "shareaza.exe",
        "bitcomet.exe",
        "fragments",
        "motrix",
        "webtorrent",
        "halite.exe",
        "picotorrent",
        "gtk-gnutella",
        "ncdc",
        "microdc2",
        "eiskaltdcpp-qt",
        "ipfs",
        "tor",
        "i2pd",
    ):
        assert client in names, client


def test_default_policy_flags_nothing_on_this_machine() -> None:
    snapshot = machine_snapshot()
    assert sum(not p.kernel_thread for p in snapshot.processes.values()) >= 2  # a real machine
    findings = evaluate(snapshot, compile_policy(load_policy_file(POLICIES / "default.yaml")))
    assert findings == [], [f.reason for f in findings]


def _free_port_in(low: int, high: int) -> int:
    for port in range(low, high + 1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {low}-{high} on 127.0.0.1")


def test_default_policy_flags_real_stand_ins(spawn: SpawnFn) -> None:
    """Real processes and sockets, seen through psutil: a client by name, a listener by port."""
    client = spawn("qbittorrent-nox")
    listener = spawn("innocent-looking", Listen("tcp", "127.0.0.1", _free_port_in(6881, 6889)))
    quiet = spawn("innocent-too", Listen("tcp", "127.0.0.1"))
    mine = frozenset({client.pid, listener.pid, quiet.pid})
    snapshot = machine_snapshot(keep=mine)
    findings = evaluate(snapshot, compile_policy(load_policy_file(POLICIES / "default.yaml")))
    got = {(f.rule_id, f.process.pid) for f in findings if f.process.pid in mine}
    assert got == {("p2p-qbittorrent", client.pid), ("p2p-bittorrent-listen", listener.pid)}, [
        f.reason for f in findings
    ]


def _swarm_member(pid: int, exe: str) -> tuple[ProcessInfo, list[Connection]]:
    """A process dialling ten peers in ten networks on their own ports, and listening."""
    proc = ProcessInfo(pid=pid, ppid=1, name="syncthing", exe=exe, uid=1000, create_time=float(pid))
    conns = [Connection(pid, "ipv4", "tcp", Endpoint("0.0.0.0", 22000), None, "LISTEN", Direction.LISTEN)]
    conns += [
        Connection(
            pid,
            "ipv4",
            "tcp",
            Endpoint("10.0.0.5", 50000 + i),
            Endpoint(f"{20 + i}.1.2.3", 22000 + 7 * i),
            "ESTABLISHED",
            Direction.OUTBOUND,
        )
        for i in range(10)
    ]
    return proc, conns


def test_default_policy_approves_packaged_syncthing_but_not_a_copy_elsewhere() -> None:
    """Approved P2P by path: the packaged binary in a root-owned directory is allowed; the same
    behaviour from a user's copy (or a renamed client posing as it) is P2P by behaviour."""
    approved, approved_conns = _swarm_member(901, "/usr/bin/syncthing")
    copy, copy_conns = _swarm_member(902, "/home/alice/.local/bin/syncthing")
    snapshot = Snapshot(
        taken_at=datetime.now(UTC),
        processes={901: approved, 902: copy},
        connections=(*approved_conns, *copy_conns),
    )
    compiled = compile_policy(load_policy_file(POLICIES / "default.yaml"))
    snapshot = BehaviourTracker(compiled.p2p_window_scans).annotate(snapshot)
    got = {(f.rule_id, f.process.pid) for f in evaluate(snapshot, compiled)}
    assert got == {("p2p-behaviour", 902)}
