"""Synthetic policies of any size, shaped like real ones, as the dict a YAML file would load to.

The mix per 100 rules: 40 exact names, 15 name globs, 15 SHA-256s, 10 path globs,
15 network rules (ports, ranges, CIDRs, protocol, direction), 5 combining user/parent with
`unless`; plus a few cmdline regexes (one per 1,000 rules, at least one, at most ten:
real policies use few, and regexes are the one condition that cannot be indexed).
A handful of rules match the benchmark's own processes, so evaluation produces findings
(the same ones for every size), as on a real machine where a few things are flagged.
"""

from __future__ import annotations

import random
from typing import Any

_CATEGORIES = ("p2p", "remote-access", "proxy", "crypto-mining", "games", "unapproved")
_VENDORS = ("acme", "globex", "initech", "umbrella", "hooli", "vandelay", "stark", "wayne", "tyrell", "cyber")
_REGEXES = (
    r"--seed(-ratio)?[= ]\d+",
    r"(?:^|\s)--listen-port[= ](6881|6889|51413)\b",
    r"\bstratum\+tcp://[\w.-]+:\d+",
    r"--(socks5|proxy)-server[= ]\S+",
    r"\b(?:magnet:\?xt=urn:btih:)[0-9a-f]{40}",
    r"-o\s+pool\.[\w.-]+:\d{3,5}",
    r"--headless\b.*--remote-debugging-port",
    r"\bngrok\s+(tcp|http)\s+\d+",
    r"--donate-level[= ]\d",
    r"\b(?:tor|obfs4proxy)\b.*SocksPort",
)


def synthetic_policy(
    rules: int,
    *,
    process_matches: tuple[str, ...] = (),
    network_matches: tuple[str, ...] = (),
    seed: int = 1,
) -> dict[str, Any]:
    """A valid policy document with `rules` rules (ids r00000...).

    `process_matches`: name globs given a report rule each; `network_matches`: name globs
    given a rule on their inbound TCP connections.
    """
    rng = random.Random(seed * 1_000_003 + rules)
    out: list[dict[str, Any]] = []
    n_regex = max(1, min(10, rules // 1000))
    for name in process_matches:
        out.append(_rule(len(out), "report", {"process": {"name": name}}, rng))
    for name in network_matches:
        network = {"protocol": "tcp", "direction": "inbound", "local_port": "1024-65535"}
        out.append(_rule(len(out), "report", {"process": {"name": name}, "network": network}, rng))
    for i in range(n_regex):
        out.append(_rule(len(out), "block", {"process": {"cmdline": _REGEXES[i % len(_REGEXES)]}}, rng))
    while len(out) < rules:
        out.append(_random_rule(len(out), rng))
    return {
        "name": f"synthetic-{rules}",
        "version": 1,
        "mode": "monitor",
        "description": f"benchmark policy with {rules} rules",
        "defaults": {
            "message": "Not allowed here.",
            "help_url": "https://intranet.example.com/acceptable-use",
        },
        "unapproved": {"action": "report", "min_uid": 1000, "exclude_users": ["backup"]},
        "rules": out[:rules],
    }


def _rule(index: int, action: str, conditions: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {
        "id": f"r{index:05d}",
        "category": rng.choice(_CATEGORIES),
        "action": action,
        **conditions,
    }


def _random_rule(index: int, rng: random.Random) -> dict[str, Any]:
    roll = rng.randrange(100)
    vendor = f"{rng.choice(_VENDORS)}{index}"
    action = rng.choice(("allow", "report", "block", "block"))
    if roll < 40:
        names = [f"{vendor}-app", f"{vendor}d"] if rng.random() < 0.3 else f"{vendor}-app"
        return _rule(index, action, {"process": {"name": names}}, rng)
    if roll < 55:
        glob = rng.choice((f"{vendor}*", f"{vendor}-*-helper", f"*-{vendor}"))
        return _rule(index, action, {"process": {"name": glob}}, rng)
    if roll < 70:
        digests = [rng.randbytes(32).hex() for _ in range(rng.choice((1, 1, 2, 3)))]
        return _rule(index, action, {"process": {"sha256": digests}}, rng)
    if roll < 80:
        path = rng.choice((f"/opt/{vendor}/*", f"/usr/local/bin/{vendor}", f"/home/*/.local/bin/{vendor}*"))
        return _rule(index, action, {"process": {"path": path}}, rng)
    if roll < 95:
        return _rule(index, rng.choice(("report", "block")), {"network": _network(rng)}, rng)
    conditions = {
        "process": {"name": f"{vendor}*", "user": ["alice", "bob"], "parent": ["bash", "zsh", "explorer*"]},
        "unless": {"path": f"/opt/{vendor}/approved/*"},
    }
    return _rule(index, "block" if action == "allow" else action, conditions, rng)


def _network(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(5)
    if kind == 0:
        port = rng.randrange(1024, 65000)
        return {"remote_port": [port, f"{port + 10}-{port + 20}"], "protocol": "tcp", "direction": "outbound"}
    if kind == 1:
        return {"remote_address": f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/24"}
    if kind == 2:
        return {
            "remote_address": [f"2001:db8:{rng.randrange(65536):x}::/48", f"198.51.100.{rng.randrange(256)}"],
            "remote_port": rng.randrange(1, 65536),
        }
    if kind == 3:
        return {"local_port": rng.randrange(1024, 65536), "direction": "listen", "protocol": ["tcp", "udp"]}
    low = rng.randrange(1024, 60000)
    return {"remote_port": f"{low}-{low + 100}", "protocol": "udp"}
