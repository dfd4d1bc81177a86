"""Sorting new processes before the pipeline: most execs need nothing, so they cost next to nothing.

For each exec the watcher hands over, `ExecTriage` identifies the binary (collect.exec_identity:
three small reads) and asks the compiled policy once per binary identity which rules a
process running it could meet (policy.binary_rules); the answer is cached until the policy
object changes. The process then gets one `Verdict`:

* GONE: it exited (or is a zombie) before it was looked at -- no check, no re-check;
* SKIP: no rule can match a process running this binary;
* CHECK: the full pipeline once, now (a binary, user, parent or unapproved rule may match,
  or a command-line rule's regex is in its command line);
* WATCH: the full pipeline now and at the re-checks (it may also meet a network rule);
* PROBE: network or P2P rules only: at each check, the full pipeline only if the process
  holds a socket by then (a process that never opens one costs a directory listing).

A binary that cannot be identified (its exe link denied) is WATCHed: the full path as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from endpoint_agent.collect.exec_identity import ExecIdentity, command_line, identify
from endpoint_agent.policy.binary_rules import BinaryRules, Need

DEFAULT_MAX_BINARIES = 4096

# (pid, exe) -> SHA-256 of what the process runs / its owning package (None: unknown, unowned).
Digest = Callable[[int, str], "str | None"]
Package = Callable[[int, str], "str | None"]


class Verdict(Enum):
    GONE = "gone"
    SKIP = "skip"
    CHECK = "check"
    WATCH = "watch"
    PROBE = "probe"


@dataclass
class TriageStats:
    gone: int = 0
    skipped: int = 0
    checked: int = 0
    probed: int = 0
    binaries: int = 0  # answers computed (cache misses)
    policy_changes: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class ExecTriage:
    def __init__(
        self,
        compiled: Callable[[], Any],
        *,
        digest: Digest,
        package: Package,
        max_binaries: int = DEFAULT_MAX_BINARIES,
        proc_root: str = "/proc",
    ) -> None:
        """`compiled()`: the active CompiledPolicy, or None when there is none (nothing to check)."""
        if max_binaries < 1:
            raise ValueError("max_binaries must be >= 1")
        self._compiled = compiled
        self._digest = digest
        self._package = package
        self._max = max_binaries
        self._proc = proc_root
        self._rules: BinaryRules | None = None
        self._needs: dict[ExecIdentity, Need] = {}
        self.stats = TriageStats()

    def __len__(self) -> int:
        return len(self._needs)

    def __call__(self, pids: Iterable[int]) -> dict[int, Verdict]:
        rules = self._current_rules()
        out: dict[int, Verdict] = {}
        for pid in pids:
            out[pid] = verdict = self._verdict(pid, rules)
            if verdict is Verdict.GONE:
                self.stats.gone += 1
            elif verdict is Verdict.SKIP:
                self.stats.skipped += 1
            elif verdict is Verdict.PROBE:
                self.stats.probed += 1
            else:
                self.stats.checked += 1
        return out

    def _current_rules(self) -> BinaryRules | None:
        compiled = self._compiled()
        if compiled is None:
            return None
        if self._rules is None or self._rules.compiled is not compiled:
            if self._rules is not None:
                self.stats.policy_changes += 1
            self._rules = BinaryRules(compiled)
            self._needs.clear()  # every answer was the old policy's
        return self._rules

    def _verdict(self, pid: int, rules: BinaryRules | None) -> Verdict:
        found = identify(pid, proc_root=self._proc)
        if found is None:
            return Verdict.GONE
        if rules is None:
            return Verdict.SKIP  # no policy yet: the pipeline would evaluate nothing either
        identity = found.identity
        if identity is None:
            return Verdict.WATCH
        need = self._needs.get(identity)
        if need is None:
            need = self._need(pid, identity, rules)
        if need.nothing:
            return Verdict.SKIP
        if need.now or (need.cmdline and _in_cmdline(need, pid, self._proc)):
            return Verdict.WATCH if need.sockets else Verdict.CHECK
        return Verdict.PROBE if need.sockets else Verdict.SKIP

    def _need(self, pid: int, identity: ExecIdentity, rules: BinaryRules) -> Need:
        sha256 = self._digest(pid, identity.exe) if rules.wants_sha256 else None
        package = self._package(pid, identity.exe) if rules.wants_package else None
        need = rules.need(identity.name, identity.exe, sha256=sha256, package=package)
        if len(self._needs) >= self._max:
            del self._needs[next(iter(self._needs))]  # the oldest answer
        self._needs[identity] = need
        self.stats.binaries += 1
        return need


def _in_cmdline(need: Need, pid: int, proc_root: str) -> bool:
    cmdline = command_line(pid, proc_root=proc_root)
    return cmdline is None or need.wants_check(cmdline)  # unreadable: check it fully


__all__ = ["DEFAULT_MAX_BINARIES", "ExecTriage", "TriageStats", "Verdict"]
