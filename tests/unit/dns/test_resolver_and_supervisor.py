"""Switching the resolver and putting it back (files in a temporary directory), the address map,
and the supervisor's fail-open logic on a double."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from endpoint_agent.dns.addrmap import AddressMap
from endpoint_agent.dns.resolver import (
    MARKER,
    ResolvConf,
    ResolvedDropIn,
    ResolverConfigError,
    choose_resolver,
    restore_left_over,
)
from endpoint_agent.dns.supervisor import Supervisor
from endpoint_agent.endpoints import parse_server
from endpoint_agent.errors import SettingsError
from endpoint_agent.settings import load_settings
from endpoint_agent.types import Connection, Direction, Endpoint, Snapshot
from tests.support.doubles import FakeClock

LISTEN = Endpoint("127.0.0.153", 53)
ORIGINAL = "search example.net\nnameserver 10.0.0.53\nnameserver 2001:db8::53%eth0\n"


def test_resolv_conf_is_pointed_at_the_filter_and_restored(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    state = tmp_path / "state"
    resolver = ResolvConf(state, conf)
    assert resolver.original_upstreams() == [Endpoint("10.0.0.53", 53), Endpoint("2001:db8::53", 53)]
    resolver.apply(LISTEN)
    assert conf.read_text().startswith(MARKER) and "nameserver 127.0.0.153\n" in conf.read_text()
    resolver.apply(LISTEN)  # twice (a restart after a crash): the backup stays the original
    assert resolver.original_upstreams()[0] == Endpoint("10.0.0.53", 53)
    assert resolver.restore() is True
    assert conf.read_text() == ORIGINAL and not resolver.applied
    assert resolver.restore() is False


def test_a_symlinked_resolv_conf_gets_its_link_back(tmp_path: Path) -> None:
    target = tmp_path / "stub-resolv.conf"
    target.write_text(ORIGINAL)
    conf = tmp_path / "resolv.conf"
    conf.symlink_to(target)
    resolver = ResolvConf(tmp_path / "state", conf)
    resolver.apply(LISTEN)
    assert not conf.is_symlink() and target.read_text() == ORIGINAL  # the link target is untouched
    resolver.restore()
    assert conf.is_symlink() and os.readlink(conf) == str(target)


def test_a_configuration_someone_else_changed_meanwhile_is_left_alone(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    resolver = ResolvConf(tmp_path / "state", conf)
    resolver.apply(LISTEN)
    conf.write_text("nameserver 10.9.9.9\n")  # e.g. the network manager took over
    assert resolver.restore() is True
    assert conf.read_text() == "nameserver 10.9.9.9\n" and not resolver.applied


def test_left_over_backup_is_restored_at_the_next_start(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    state = tmp_path / "state"
    ResolvConf(state, conf).apply(LISTEN)  # ... and then the agent was killed
    assert restore_left_over(state, [ResolvConf(state, conf)]) is True
    assert conf.read_text() == ORIGINAL
    assert restore_left_over(state, [ResolvConf(state, conf)]) is False


def test_resolv_conf_cannot_name_another_port(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    with pytest.raises(ResolverConfigError, match="port 53"):
        ResolvConf(tmp_path / "state", conf).apply(Endpoint("127.0.0.153", 5353))
    assert conf.read_text() == ORIGINAL


def test_resolved_drop_in_written_reloaded_and_removed(tmp_path: Path) -> None:
    upstreams = tmp_path / "run-resolv.conf"
    upstreams.write_text("nameserver 10.0.0.53\n")
    reloads: list[int] = []
    dropins = tmp_path / "resolved.conf.d"
    resolver = ResolvedDropIn(
        tmp_path / "state", dropins, upstreams_file=upstreams, reload=lambda: reloads.append(1)
    )
    resolver.apply(LISTEN)
    text = (dropins / "endpoint-agent.conf").read_text()
    assert "[Resolve]\nDNS=127.0.0.153\nDomains=~.\n" in text
    upstreams.write_text("nameserver 127.0.0.153\n")  # resolved now lists the filter itself...
    assert resolver.original_upstreams() == [Endpoint("10.0.0.53", 53)]  # ...the saved ones count
    assert resolver.restore() is True
    assert not (dropins / "endpoint-agent.conf").exists() and len(reloads) == 2


def test_choose_resolver_follows_a_left_over_backup(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dropins = tmp_path / "d"
    ResolvedDropIn(state, dropins, upstreams_file=tmp_path / "none", reload=lambda: None).apply(LISTEN)
    assert isinstance(choose_resolver(state, tmp_path / "resolv.conf", dropins), ResolvedDropIn)


def test_address_map_expires_with_the_ttl_and_annotates_connections() -> None:
    clock = FakeClock()
    addresses = AddressMap(clock, max_entries=2, min_ttl=60)
    addresses.learn("a.example", [("192.0.2.1", 30), ("bad", 30)])
    addresses.learn("b.example", [("2001:db8::1", 600)])
    conn = Connection(
        1,
        "ipv4",
        "tcp",
        Endpoint("10.0.0.5", 4000),
        Endpoint("192.0.2.1", 443),
        "ESTABLISHED",
        Direction.OUTBOUND,
    )
    snap = addresses.annotate(Snapshot(taken_at=clock.now(), processes={}, connections=(conn,)))
    assert snap.connections[0].domain == "a.example"
    assert snap.connections[0].to_json()["domain"] == "a.example"
    clock.advance(61)  # the TTL of 30 s was raised to the 60 s minimum, and is now over
    assert addresses.lookup("192.0.2.1") is None
    assert addresses.lookup("2001:db8::1") == "b.example"
    addresses.learn("c.example", [("192.0.2.3", 60), ("192.0.2.4", 60)])
    assert len(addresses) == 2 and addresses.lookup("2001:db8::1") is None  # bounded: oldest out


class Target:
    def __init__(self) -> None:
        self.reason: str | None = None
        self.calls: list[str] = []

    def health(self) -> str | None:
        return self.reason

    def fail_open(self, reason: str) -> None:
        self.calls.append(f"fail_open: {reason}")

    def repair(self) -> None:
        self.calls.append("repair")

    def resume(self) -> bool:
        self.calls.append("resume")
        return True


def test_supervisor_fails_open_after_two_bad_checks_and_resumes_after_three_good() -> None:
    target = Target()
    supervisor = Supervisor(target, clock=FakeClock())
    supervisor.check()
    target.reason = "no upstream DNS server answers"
    supervisor.check()
    assert target.calls == []  # one bad check is a blip
    supervisor.check()
    assert target.calls == ["fail_open: no upstream DNS server answers"] and supervisor.state.failing
    supervisor.check()
    assert target.calls[-1] == "repair"
    target.reason = None
    supervisor.check()
    supervisor.check()
    assert supervisor.state.failing
    supervisor.check()
    assert target.calls[-1] == "resume" and not supervisor.state.failing and supervisor.state.trips == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.153:53", Endpoint("127.0.0.153", 53)),
        ("9.9.9.9", Endpoint("9.9.9.9", 53)),
        ("[::1]:5353", Endpoint("::1", 5353)),
        ("2001:db8::1", Endpoint("2001:db8::1", 53)),
    ],
)
def test_server_addresses(text: str, expected: Endpoint) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dns_listen": "10.0.0.1:53"}, "loopback"),
        ({"dns_listen": "localhost"}, "not an IP address"),
        ({"dns_upstreams": ["1.1.1.1:99999"]}, "port"),
        ({"dns_sinkhole": "blockpage"}, "not an IP address"),
        ({"dns_filter": "maybe"}, "dns_filter"),
    ],
)
def test_bad_dns_settings_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(overrides, environ={})


def test_dns_settings_from_env_and_yaml_booleans(tmp_path: Path) -> None:
    settings = load_settings({}, environ={"ENDPOINT_AGENT_DNS_UPSTREAMS": "10.0.0.53, [2001:db8::1]:53"})
    assert settings.dns_upstreams == ("10.0.0.53", "[2001:db8::1]:53")
    config = tmp_path / "config.yaml"
    config.write_text("dns_filter: off\n")
    assert load_settings({"config": str(config)}, environ={}).dns_filter == "off"
