"""Which rules a process running a given binary could ever meet: the question asked once per binary.

Why: a build starts hundreds of programs a second, nearly all of them binaries no rule names.
Three of a rule's conditions depend only on the program (its name, executable path and
SHA-256); if one of them fails for a binary, no process running that binary can match the
rule, whatever its user, parent, command line or connections. `BinaryRules` answers, per
binary, what is left to look at for a process that runs it (`Need`):

* `now`: a rule may match from what exists at exec (the binary alone, user, parent, the
  unapproved check): the process is checked at once;
* `cmdline`: the regexes of rules that turn on the command line only: the process is checked
  at once when one of them is found in it;
* `sockets`: a network or P2P rule may match: the process is checked whenever it holds a
  socket (at exec and at the re-checks that follow it).

Allow rules never produce a finding and are left out (an allow rule only cancels findings or
approves for the unapproved check, so ignoring it can only ask for more checks, never fewer).
Pure and deterministic; build one per compiled policy. Answering is linear in the rules that
name a binary (once per binary, cached by the caller); the rules that name none are folded
into one answer when the policy is compiled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from endpoint_agent.policy.compile import CompiledPolicy
from endpoint_agent.policy.matchers import GlobSet, exe_basename
from endpoint_agent.policy.model import ProcessConditions, Rule, UnapprovedAction
from endpoint_agent.types import RuleAction


@dataclass(frozen=True, slots=True)
class Need:
    """What a process running one binary must still be looked at for."""

    now: bool = False
    cmdline: tuple[re.Pattern[str], ...] = ()
    sockets: bool = False

    @property
    def nothing(self) -> bool:
        return not (self.now or self.cmdline or self.sockets)

    def wants_check(self, cmdline: str) -> bool:
        """Whether a process with this (space-joined) command line must be checked at once."""
        return self.now or any(regex.search(cmdline) for regex in self.cmdline)

    def merged(self, other: Need) -> Need:
        return Need(self.now or other.now, self.cmdline + other.cmdline, self.sockets or other.sockets)


NOTHING = Need()


@dataclass(frozen=True, slots=True)
class _BinaryConditions:
    name: GlobSet | None
    path: GlobSet | None
    sha256: frozenset[str] | None

    @classmethod
    def of(cls, cond: ProcessConditions) -> _BinaryConditions | None:
        if cond.name is None and cond.path is None and cond.sha256 is None:
            return None
        return cls(
            name=GlobSet(cond.name, casefold=True) if cond.name else None,
            path=GlobSet(cond.path, casefold=False) if cond.path else None,
            sha256=frozenset(d.lower() for d in cond.sha256) if cond.sha256 else None,
        )

    def hold(self, name_l: str, exe_name_l: str | None, exe: str | None, sha256: str | None) -> bool:
        """The same tests as policy.matchers.ProcessMatcher, on the binary's attributes only."""
        if self.sha256 is not None and (sha256 is None or sha256.lower() not in self.sha256):
            return False
        if self.name is not None and self.name.first_match(name_l) is None:
            other = exe_name_l if exe_name_l and exe_name_l != name_l else None
            if other is None or self.name.first_match(other) is None:
                return False
        return self.path is None or (exe is not None and self.path.first_match(exe) is not None)


def _need_of(rule: Rule) -> Need:
    """What a process meeting the rule's binary conditions must still be looked at for."""
    if rule.network is not None:
        return Need(sockets=True)  # a connection (or P2P behaviour) is needed for it to match
    proc = rule.process
    if proc is not None and proc.cmdline and not proc.user and not proc.parent:
        return Need(cmdline=tuple(re.compile(p) for p in proc.cmdline))
    return Need(now=True)


class BinaryRules:
    """`need(...)`: the question of the module docstring, for one compiled policy."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled
        policy = compiled.policy
        floor = NOTHING
        named: list[tuple[_BinaryConditions, Need]] = []
        for compiled_rule in compiled.rules:
            rule = compiled_rule.rule
            if rule.action is RuleAction.ALLOW:
                continue
            binary = _BinaryConditions.of(rule.process) if rule.process is not None else None
            if binary is None:
                floor = floor.merged(_need_of(rule))
            else:
                named.append((binary, _need_of(rule)))
        self._floor = floor
        self._named = tuple(named)
        unapproved = policy.unapproved
        self._unapproved = unapproved.action is not UnapprovedAction.OFF
        self.wants_package = self._unapproved and unapproved.trust_package_manager
        self.wants_sha256 = any(b.sha256 is not None for b, _ in self._named)

    def need(
        self, name: str, exe: str | None, *, sha256: str | None = None, package: str | None = None
    ) -> Need:
        """What a process named `name` running `exe` (with this SHA-256, owned by this package) needs.

        `sha256` matters only when `wants_sha256`, `package` only when `wants_package`; an
        unknown value (None) never lets a rule be skipped that it could satisfy.
        """
        need = self._floor
        if self._unapproved and (package is None or not self.wants_package):
            need = need.merged(Need(now=True))
        if need.now and need.sockets:
            return need
        name_l = name.lower()
        exe_name = exe_basename(exe)
        exe_name_l = exe_name.lower() if exe_name else None
        for binary, rule_need in self._named:
            if binary.sha256 is not None and sha256 is None:
                need = need.merged(rule_need)  # cannot rule it out without the digest
            elif binary.hold(name_l, exe_name_l, exe, sha256):
                need = need.merged(rule_need)
        return need


__all__ = ["NOTHING", "BinaryRules", "Need"]
