"""The nftables table as scripts (pure) and its life through the NetGuard, on a recording double."""

from __future__ import annotations

from pathlib import Path

from endpoint_agent.decide import Mode, ModeDecision
from endpoint_agent.dns.service import TABLE_MARKER, NetGuard
from endpoint_agent.enforce.netfilter import (
    DELETE_SCRIPT,
    ConnectionRule,
    ConnectionTable,
    connection_rules,
    elements_script,
    table_script,
)
from endpoint_agent.policy import ActivePolicy, compile_policy, parse_policy
from endpoint_agent.settings import load_settings
from endpoint_agent.types import Endpoint
from tests.support.dns_doubles import FakeResolver, RecordingNft
from tests.support.doubles import FakeClock

POLICY = """
name: t
version: 2
mode: enforce
rules:
  - {id: kill-p2p, action: block, process: {name: qbittorrent}}
  - id: sites
    action: block
    enforce: connection
    network: {domain: "*.blocked.example", remote_address: ["192.0.2.0/24", "2001:db8::/32"]}
  - id: bob-torrent-ports
    action: block
    enforce: connection
    process: {user: [bob, nosuchuser]}
    network: {remote_port: ["6881-6889", 51413], protocol: tcp}
"""


def _compiled(text: str = POLICY):  # type: ignore[no-untyped-def]
    return compile_policy(parse_policy(text, "p"))


def test_rules_come_from_connection_rules_only_with_users_resolved() -> None:
    rules = connection_rules(_compiled(), uid_of={"bob": 1000}.get)
    assert [(r.index, r.rule_id) for r in rules] == [(1, "sites"), (2, "bob-torrent-ports")]
    sites, ports = rules
    assert sites.v4 == ("192.0.2.0/24",) and sites.v6 == ("2001:db8::/32",) and sites.domains
    assert (
        ports.uids == (1000,)
        and ports.ports == ((6881, 6889), (51413, 51413))
        and ports.protocols == ("tcp",)
    )
    # A rule none of whose users exists here enforces nothing (rather than everyone).
    assert [r.rule_id for r in connection_rules(_compiled(), uid_of=lambda _: None)] == ["sites"]


def test_table_script_replaces_only_its_own_table_and_exempts_the_upstreams() -> None:
    rules = connection_rules(_compiled(), uid_of={"bob": 1000}.get)
    script = table_script(rules, [Endpoint("10.0.0.53", 53)])
    lines = script.splitlines()
    assert lines[:3] == [
        "add table inet endpoint_agent",
        "delete table inet endpoint_agent",
        "table inet endpoint_agent {",
    ]
    assert all("table" not in line or "endpoint_agent" in line for line in lines)
    assert "meta l4proto { tcp, udp } ip daddr 10.0.0.53 th dport 53 accept" in script
    assert 'ip daddr @r1_s4 meta l4proto tcp reject with tcp reset comment "sites"' in script
    assert 'ip6 daddr @r1_d6 meta l4proto != tcp reject comment "sites"' in script
    assert "set r1_d4 { type ipv4_addr; flags timeout; }" in script
    scoped = "meta skuid { 1000 } meta l4proto tcp th dport @r2_p reject with tcp reset"
    assert f'{scoped} comment "bob-torrent-ports"' in script
    assert "elements = { 6881-6889, 51413 }" in script
    # The accept for the upstream comes before every reject.
    assert script.index("th dport 53 accept") < script.index("reject")


def test_learned_addresses_get_the_ttl_as_timeout_within_bounds() -> None:
    rule = ConnectionRule(index=3, rule_id="r", domains=True)
    script = elements_script(rule, [("192.0.2.1", 5), ("2001:db8::1", 10**9), ("not-an-ip", 60)])
    assert script == (
        "add element inet endpoint_agent r3_d4 { 192.0.2.1 timeout 60s }\n"
        "add element inet endpoint_agent r3_d6 { 2001:db8::1 timeout 86400s }\n"
    )


def test_table_learns_only_for_domain_rules_and_never_an_upstream() -> None:
    nft = RecordingNft()
    table = ConnectionTable(nft, [Endpoint("192.0.2.53", 53)])
    table.apply(
        [ConnectionRule(index=1, rule_id="sites", domains=True), ConnectionRule(index=2, rule_id="p")]
    )
    table.learn(1, [("192.0.2.53", 60), ("192.0.2.54", 60)])
    table.learn(2, [("192.0.2.55", 60)])
    assert nft.scripts[-1] == "add element inet endpoint_agent r1_d4 { 192.0.2.54 timeout 60s }\n"
    table.remove()
    assert nft.scripts[-1] == DELETE_SCRIPT and not nft.exists


def _guard(tmp_path: Path, nft: RecordingNft) -> NetGuard:
    settings = load_settings({"state_dir": str(tmp_path), "dns_filter": "off"}, environ={})
    return NetGuard(
        settings,
        clock=FakeClock(),
        record=lambda violations, events: None,
        resolver=FakeResolver([Endpoint("192.0.2.53", 53)]),
        nft=nft,
        privileged=True,
    )


def _active(text: str = POLICY) -> ActivePolicy:
    return ActivePolicy.from_policy(parse_policy(text, "p"), "p")


def test_guard_keeps_the_table_to_enforce_mode_and_removes_it_on_stop(tmp_path: Path) -> None:
    nft = RecordingNft()
    guard = _guard(tmp_path, nft)
    policy = _active()
    guard.update(policy, ModeDecision(Mode.MONITOR, "policy mode is monitor"))
    assert nft.scripts == [] and not nft.exists  # monitor mode adds nothing
    guard.update(policy, ModeDecision(Mode.ENFORCE, "policy mode is enforce"))
    assert nft.exists and (tmp_path / TABLE_MARKER).exists()
    applied = len(nft.scripts)
    guard.update(policy, ModeDecision(Mode.ENFORCE, "policy mode is enforce"))
    assert len(nft.scripts) == applied  # unchanged policy and mode: the table is left alone
    guard.update(policy, ModeDecision(Mode.MONITOR, "break-glass file present"))
    assert not nft.exists and not (tmp_path / TABLE_MARKER).exists()
    guard.update(policy, ModeDecision(Mode.ENFORCE, "policy mode is enforce"))
    guard.stop()
    assert not nft.exists and not (tmp_path / TABLE_MARKER).exists()


def test_addresses_resolved_before_the_table_existed_are_added(tmp_path: Path) -> None:
    nft = RecordingNft()
    guard = _guard(tmp_path, nft)
    guard.addresses.learn("www.blocked.example", [("198.51.100.7", 300)])
    guard.update(_active(), ModeDecision(Mode.ENFORCE, "policy mode is enforce"))
    guard.wait_learned()
    assert any("r1_d4 { 198.51.100.7 timeout" in script for script in nft.scripts)
    guard.stop()


def test_a_table_left_by_a_killed_agent_is_removed_at_start(tmp_path: Path) -> None:
    nft = RecordingNft()
    nft.exists = True
    (tmp_path / TABLE_MARKER).touch()
    _guard(tmp_path, nft).recover_left_over()
    assert nft.scripts == [DELETE_SCRIPT] and not (tmp_path / TABLE_MARKER).exists()


def test_without_the_marker_nothing_is_touched_at_start(tmp_path: Path) -> None:
    nft = RecordingNft()
    nft.exists = True  # somebody's table of the same name: not ours to delete without our marker
    _guard(tmp_path, nft).recover_left_over()
    assert nft.scripts == []


def test_nft_failure_is_reported_not_raised(tmp_path: Path) -> None:
    events: list[object] = []
    settings = load_settings({"state_dir": str(tmp_path), "dns_filter": "off"}, environ={})
    guard = NetGuard(
        settings,
        clock=FakeClock(),
        record=lambda violations, evs: events.extend(evs),
        resolver=FakeResolver([]),
        nft=RecordingNft(fail=True),
        privileged=True,
    )
    guard.update(_active(), ModeDecision(Mode.ENFORCE, "policy mode is enforce"))
    assert [e["type"] for e in events] == ["netfilter_failed"]  # type: ignore[index]
    assert guard.status()["netfilter"] == {"active": False, "rules": 0, "elements_added": 0}
