"""The lookup structures: exact answers for exact keys, supersets for patterns."""

from __future__ import annotations

import ipaddress

import pytest

from endpoint_agent.policy.fields import PortRange
from endpoint_agent.policy.index import CidrIndex, PatternIndex, PortIndex, ip_key


def _cidrs(*networks: str) -> CidrIndex:
    index = CidrIndex()
    for key, text in enumerate(networks):
        index.add(ipaddress.ip_network(text), key)
    index.freeze()
    return index


def _lookup_cidr(index: CidrIndex, ip: str) -> set[int]:
    out: set[int] = set()
    key = ip_key(ip)
    assert key is not None
    index.candidates(key, out)
    return out


def test_cidr_index_per_prefix_length() -> None:
    index = _cidrs("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "2001:db8::/32", "::1/128")
    assert _lookup_cidr(index, "10.1.2.3") == {0, 1, 2, 3}
    assert _lookup_cidr(index, "10.2.0.1") == {0, 3}
    assert _lookup_cidr(index, "11.0.0.1") == {3}
    assert _lookup_cidr(index, "2001:db8:1::1") == {4}
    assert _lookup_cidr(index, "2001:db9::1") == set()
    assert _lookup_cidr(index, "::1") == {5}
    assert _lookup_cidr(index, "::ffff:10.1.2.3") == {0, 1, 2, 3}  # IPv4-mapped counts as IPv4


def test_cidr_index_probes_one_table_per_prefix_length() -> None:
    index = _cidrs(*[f"10.{i // 256}.{i % 256}.0/24" for i in range(5000)], "192.168.0.0/16")
    assert len(index._by_version[4]) == 2  # 5001 networks, two prefix lengths: two dict probes
    assert _lookup_cidr(index, "10.3.7.9") == {3 * 256 + 7}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", (4, 0xC0000201)),
        ("::ffff:192.0.2.1", (4, 0xC0000201)),
        ("fe80::1%eth0", (6, (0xFE80 << 112) | 1)),
        ("not-an-ip", None),
        ("1.2.3", None),
        ("", None),
    ],
)
def test_ip_key(text: str, expected: tuple[int, int] | None) -> None:
    assert ip_key(text) == expected


def test_port_index_exact_and_long_ranges() -> None:
    index = PortIndex()
    index.add(PortRange(6881, 6889), 0)
    index.add(PortRange(443, 443), 1)
    index.add(PortRange(1024, 65535), 2)
    index.add(PortRange(255, 257), 3)
    index.freeze()

    def lookup(port: int) -> set[int]:
        out: set[int] = set()
        index.candidates(port, out)
        return out

    assert lookup(6881) == {0, 2} and lookup(6889) == {0, 2} and lookup(6890) == {2}
    assert lookup(443) == {1} and lookup(1023) == set() and lookup(1024) == {2} and lookup(65535) == {2}
    assert lookup(256) == {3}


def test_pattern_index_candidates() -> None:
    index = PatternIndex(casefold_exact=True)
    index.add_exact("QBittorrent", 0)
    index.add_pattern([["torrent"]], 1)
    index.add_pattern([], 2)  # nothing to index by: a residual, offered for every value
    index.add_pattern([["zzzz", "yyyy"]], 3)  # either needle
    # Both clauses required: each pattern is indexed by its rarer one ("/home/" is shared).
    index.add_pattern([["/home/"], ["-rare-tool"]], 4)
    index.add_pattern([["/home/"], ["-other-a"]], 5)
    index.add_pattern([["/home/"], ["-other-b"]], 6)
    index.freeze()

    def lookup(*values: str) -> set[int]:
        out: set[int] = set()
        index.candidates(values, out)
        return out

    assert lookup("qbittorrent") == {0, 1, 2}
    assert lookup("rtorrent") == {1, 2}
    assert lookup("firefox") == {2}
    assert lookup("a-yyyy-b") == {2, 3}
    assert lookup("/home/alice/bin/tool") == {2}
    assert lookup("/opt/x-rare-tool") == {2, 4}  # a superset: the engine verifies candidates
    assert index.residual_count == 1


def test_pattern_index_memo_is_bounded_in_entries_and_characters() -> None:
    index = PatternIndex(casefold_exact=False, memo_size=4, memo_chars=1000)
    index.add_pattern([["seed"]], 0)
    index.freeze()
    for i in range(10):
        for value, expected in ((f"tool --seed {i}", {0}), (f"tool --sed {i}" + "x" * 400, set())):
            out: set[int] = set()
            index.candidates((value,), out)
            assert out == expected
            assert len(index._memo) <= 4
            assert sum(map(len, index._memo)) <= 1000
