"""The agent's own nftables table, `inet endpoint_agent`: refusing connections of `enforce: connection` rules.

One table, only ever this one: it is replaced whole (one atomic `nft -f -` transaction) when the
policy or the mode changes, elements are added to its sets as the DNS filter learns addresses,
and it is deleted on stop. Per rule `rN` (N: the rule's index in the compiled policy):

    set rN_s4 / rN_s6   static addresses and CIDRs of `remote_address` (interval)
    set rN_d4 / rN_d6   addresses learned for the rule's domains (timeout = DNS TTL)
    set rN_p            `remote_port` ranges
    chain output        [meta skuid {uids}] ip daddr @rN_s4 meta l4proto tcp th dport @rN_p
                        reject with tcp reset (one statement per address set and protocol)

`meta skuid` scopes a rule with `process: {user: ...}` to those users; without it the rule is
machine-wide. The DNS servers the filter forwards to are exempt, so a rule can never cut the
filter off from its upstreams. nft is run with argument lists and the script on stdin, never
through a shell. Other tables are never read or written.
"""

from __future__ import annotations

import ipaddress
import logging
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from endpoint_agent.errors import AgentError
from endpoint_agent.types import Endpoint

logger = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "endpoint_agent"
MIN_TIMEOUT = 60
MAX_TIMEOUT = 86_400
_NFT_TIMEOUT = 30.0


class NetfilterError(AgentError):
    """nft failed or is missing; the table is left as the kernel has it (or absent)."""


@dataclass(frozen=True, slots=True)
class ConnectionRule:
    """What the table enforces for one `enforce: connection` rule."""

    index: int
    rule_id: str
    uids: tuple[int, ...] = ()  # empty: every user
    v4: tuple[str, ...] = ()  # static networks (CIDR text)
    v6: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    protocols: tuple[str, ...] = ()  # tcp/udp; empty: any
    domains: bool = False  # learned addresses may be added

    @property
    def prefix(self) -> str:
        return f"r{self.index}"


def connection_rules(
    compiled: object, uid_of: Callable[[str], int | None] | None = None
) -> list[ConnectionRule]:
    """The table's rules for a compiled policy (endpoint_agent.policy.CompiledPolicy)."""
    uid_of = uid_of or _uid_of
    out: list[ConnectionRule] = []
    for index in getattr(compiled, "connection_rules", ()):
        rule = compiled.rules[index]  # type: ignore[attr-defined]
        model = rule.rule
        net = model.network
        uids: list[int] = []
        for user in (model.process.user or ()) if model.process else ():
            uid = uid_of(user)
            if uid is None:
                logger.warning("rule %s: no user %r on this machine; not enforced for it", rule.id, user)
            else:
                uids.append(uid)
        if model.process is not None and model.process.user and not uids:
            continue  # none of its users exists here: nothing to enforce
        nets = list(net.remote_address or ())
        out.append(
            ConnectionRule(
                index=index,
                rule_id=rule.id,
                uids=tuple(sorted(set(uids))),
                v4=tuple(str(n) for n in nets if n.version == 4),
                v6=tuple(str(n) for n in nets if n.version == 6),
                ports=tuple((p.low, p.high) for p in net.remote_port or ()),
                protocols=tuple(p.value for p in net.protocol or ()),
                domains=bool(rule.domains),
            )
        )
    return out


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _ports(ports: Iterable[tuple[int, int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)


def table_script(rules: Sequence[ConnectionRule], exempt: Sequence[Endpoint] = ()) -> str:
    """The whole table, replacing any previous one in the same transaction."""
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{"]
    for rule in rules:
        p = rule.prefix
        if rule.v4:
            lines.append(
                f"  set {p}_s4 {{ type ipv4_addr; flags interval; elements = {{ {', '.join(rule.v4)} }}; }}"
            )
        if rule.v6:
            lines.append(
                f"  set {p}_s6 {{ type ipv6_addr; flags interval; elements = {{ {', '.join(rule.v6)} }}; }}"
            )
        if rule.domains:
            lines.append(f"  set {p}_d4 {{ type ipv4_addr; flags timeout; }}")
            lines.append(f"  set {p}_d6 {{ type ipv6_addr; flags timeout; }}")
        if rule.ports:
            lines.append(
                f"  set {p}_p {{ type inet_service; flags interval; elements = {{ {_ports(rule.ports)} }}; }}"
            )
    lines.append("  chain output {")
    lines.append("    type filter hook output priority 0; policy accept;")
    for server in exempt:  # the DNS filter's own upstreams stay reachable, whatever a rule says
        family = "ip6" if ":" in server.ip else "ip"
        lines.append(
            f"    meta l4proto {{ tcp, udp }} {family} daddr {server.ip} th dport {server.port} accept"
        )
    for rule in rules:
        lines.extend(f"    {statement}" for statement in _statements(rule))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _statements(rule: ConnectionRule) -> list[str]:
    p = rule.prefix
    scope = f"meta skuid {{ {', '.join(map(str, rule.uids))} }} " if rule.uids else ""
    targets: list[str] = []
    if rule.v4:
        targets.append(f"ip daddr @{p}_s4 ")
    if rule.v6:
        targets.append(f"ip6 daddr @{p}_s6 ")
    if rule.domains:
        targets += [f"ip daddr @{p}_d4 ", f"ip6 daddr @{p}_d6 "]
    if not targets:
        targets = [""]
    ports = f"th dport @{p}_p " if rule.ports else ""
    out: list[str] = []
    for target in targets:
        # Ports need a transport protocol; without ports or protocol every protocol is refused.
        protocols: tuple[str, ...] = ()
        if rule.ports or rule.protocols:
            protocols = rule.protocols or ("tcp", "udp")
        for proto in protocols:
            verdict = "reject with tcp reset" if proto == "tcp" else "reject"
            out.append(f'{scope}{target}meta l4proto {proto} {ports}{verdict} comment "{rule.rule_id}"')
        if not protocols:
            out.append(f'{scope}{target}meta l4proto tcp reject with tcp reset comment "{rule.rule_id}"')
            out.append(f'{scope}{target}meta l4proto != tcp reject comment "{rule.rule_id}"')
    return out


def elements_script(rule: ConnectionRule, answers: Iterable[tuple[str, float]]) -> str:
    """Add learned (address, seconds to live) to the rule's domain sets."""
    v4: list[str] = []
    v6: list[str] = []
    for ip, ttl in answers:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            continue
        timeout = int(min(max(ttl, MIN_TIMEOUT), MAX_TIMEOUT))
        (v4 if addr.version == 4 else v6).append(f"{addr} timeout {timeout}s")
    lines = []
    if v4:
        lines.append(f"add element {FAMILY} {TABLE} {rule.prefix}_d4 {{ {', '.join(v4)} }}")
    if v6:
        lines.append(f"add element {FAMILY} {TABLE} {rule.prefix}_d6 {{ {', '.join(v6)} }}")
    return "\n".join(lines) + "\n" if lines else ""


DELETE_SCRIPT = f"delete table {FAMILY} {TABLE}\n"


class Nft(Protocol):
    """The one side effect: run an nft script (a double lives in the tests)."""

    def run(self, script: str) -> None: ...

    def list_table(self) -> str | None:
        """`nft -j list table inet endpoint_agent` output, or None when there is no such table."""
        ...


class NftCli:
    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary or shutil.which("nft") or "/usr/sbin/nft"

    @staticmethod
    def available() -> bool:
        return shutil.which("nft") is not None or shutil.which("/usr/sbin/nft") is not None

    def run(self, script: str) -> None:
        done = self._nft(["-f", "-"], script)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise NetfilterError(f"nft failed ({done.returncode}): {first}")

    def list_table(self) -> str | None:
        done = self._nft(["-j", "list", "table", FAMILY, TABLE])
        return done.stdout if done.returncode == 0 else None

    def _nft(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self._binary, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=_NFT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise NetfilterError(f"cannot run nft: {exc}") from exc


class ConnectionTable:
    """The table's life: `apply` a policy's rules, `learn` addresses, `remove` on stop."""

    def __init__(self, nft: Nft, exempt: Sequence[Endpoint] = ()) -> None:
        self._nft = nft
        self._exempt = tuple(exempt)
        self._rules: dict[int, ConnectionRule] = {}
        self.active = False
        self.elements_added = 0

    @property
    def rules(self) -> dict[int, ConnectionRule]:
        return self._rules

    def apply(self, rules: Sequence[ConnectionRule]) -> None:
        """Replace the table with these rules; no rules: remove it."""
        if not rules:
            self.remove()
            return
        self._nft.run(table_script(rules, self._exempt))
        self._rules = {r.index: r for r in rules}
        self.active = True

    def learn(self, index: int, answers: Sequence[tuple[str, float]]) -> None:
        rule = self._rules.get(index)
        if rule is None or not rule.domains or not self.active:
            return
        exempt = {e.ip for e in self._exempt}
        script = elements_script(rule, [(ip, ttl) for ip, ttl in answers if ip not in exempt])
        if script:
            self._nft.run(script)
            self.elements_added += len(answers)

    def remove(self) -> None:
        """Delete the table if it exists (also one left by an agent that was killed)."""
        self._rules = {}
        self.active = False
        if self._nft.list_table() is not None:
            self._nft.run(DELETE_SCRIPT)


__all__ = [
    "DELETE_SCRIPT",
    "FAMILY",
    "TABLE",
    "ConnectionRule",
    "ConnectionTable",
    "NetfilterError",
    "Nft",
    "NftCli",
    "connection_rules",
    "elements_script",
    "table_script",
]
