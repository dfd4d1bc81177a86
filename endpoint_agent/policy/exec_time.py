"""The part of a policy the exec gate can decide before a program runs (pure, compiled once).

At exec time the gate knows the file being executed (its path, so its name; its SHA-256; the
package that owns it) and the user of the exec'ing process. It does not know the command line,
the parent, the connections or the P2P behaviour: those exist only after exec, and rules that
need them stay on the post-exec path (the engine in `engine.py`).

Every rule is restricted to its exec-time conditions (`name`, `path`, `sha256`, `user`); the
restricted rules are compiled with the ordinary compiler, so one lookup costs the same whatever
the rule count. A restricted rule is *exact* when nothing was dropped (no `cmdline`, `parent`
or `network`, and an `unless` that is decidable too): its match is the rule's match. Otherwise
it only says the rule *may* match.

The gate denies only what the post-exec path would block for sure, with the engine's precedence
(policy/engine.py): an exact `block` rule matches and no rule that may match is more specific
without being a block rule; or the unapproved-apps check would block the program (no allow rule
may approve it, its user is in scope, no package owns it when packages are trusted). Everything
uncertain is allowed and left to the post-exec path.

    exec_policy = ExecTimePolicy.of(compiled)
    judgement = exec_policy.judge(ExecFile(path="/usr/bin/foo", sha256=None, package=None), user=None)
    judgement.verdict   # ALLOW, DENY or NEED_USER (ask again with the exec'ing process's user)

Names at exec time are the basename of the executed file (a symlink is resolved by the kernel:
`sh` executes `dash`); the process name the post-exec path also sees may differ.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import StrEnum

from endpoint_agent.policy.compile import CompiledPolicy, CompiledRule, compile_policy
from endpoint_agent.policy.matchers import ProcessView
from endpoint_agent.policy.model import Policy, ProcessConditions, Rule, UnapprovedAction
from endpoint_agent.policy.reasons import process_reason
from endpoint_agent.policy.unapproved import unapproved_finding
from endpoint_agent.types import Finding, ProcessInfo, RuleAction

EXEC_TIME_KEYS = ("name", "path", "sha256", "user")
POST_EXEC_KEYS = ("cmdline", "parent")


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    NEED_USER = "need_user"  # the verdict depends on who executes: judge again with the user


@dataclass(frozen=True, slots=True)
class ExecFile:
    """What the gate read about the file being executed."""

    path: str
    sha256: str | None = None  # None: not needed by the policy, or unreadable
    package: str | None = None  # the system package that owns it, None when unowned or unknown


@dataclass(frozen=True, slots=True)
class ExecUser:
    uid: int
    username: str | None


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    finding: Finding | None = None  # the block finding behind a DENY
    depends_on_user: bool = False  # an ALLOW/DENY computed with the user's identity

    @property
    def rule_id(self) -> str | None:
        return self.finding.rule_id if self.finding else None


ALLOW = Judgement(Verdict.ALLOW)
_NEED_USER = Judgement(Verdict.NEED_USER)


@dataclass(frozen=True, slots=True)
class _Restricted:
    original: CompiledRule
    exact: bool


def _restrict(cond: ProcessConditions | None) -> ProcessConditions | None:
    if cond is None:
        return None
    kept = {key: getattr(cond, key) for key in EXEC_TIME_KEYS if getattr(cond, key) is not None}
    return ProcessConditions(**kept) if kept else None


def _decidable(cond: ProcessConditions | None) -> bool:
    return cond is None or all(getattr(cond, key) is None for key in POST_EXEC_KEYS)


class ExecTimePolicy:
    """The exec-time view of one compiled policy; `judge` is pure and costs one index lookup."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.policy: Policy = compiled.policy
        restricted_rules: list[Rule] = []
        self._rules: list[_Restricted] = []
        # An allow rule with no exec-time condition may approve anything (e.g. only `cmdline`):
        # then the unapproved-apps check cannot be decided before exec.
        self._approval_unknowable = False
        for rule in compiled.rules:
            cond = _restrict(rule.rule.process)
            exact = (
                rule.rule.network is None
                and _decidable(rule.rule.process)
                and _decidable(rule.rule.unless)
                and cond is not None
            )
            if cond is None:
                if rule.action is RuleAction.ALLOW:
                    self._approval_unknowable = True
                continue  # no exec-time condition: never decided here (and never more specific)
            restricted_rules.append(
                Rule(
                    id=rule.id,
                    action=rule.action,
                    process=cond,
                    # An inexact rule's `unless` is ignored: "may match" stays true without it.
                    unless=rule.rule.unless if exact else None,
                )
            )
            self._rules.append(_Restricted(rule, exact))
        self._compiled = compile_policy(
            Policy(name=self.policy.name, version=self.policy.version, rules=tuple(restricted_rules))
        )
        self._needs_user = any(r.rule.process and r.rule.process.user for r in self._compiled.rules)
        self.uses_sha256 = any(r.rule.process and r.rule.process.sha256 for r in self._compiled.rules) or any(
            r.rule.unless and r.rule.unless.sha256 for r in self._compiled.rules
        )
        unapproved = self.policy.unapproved
        self._unapproved_blocks = (
            unapproved.action is UnapprovedAction.BLOCK and not self._approval_unknowable
        )
        self.can_deny = self._unapproved_blocks or any(
            r.exact and r.original.action is RuleAction.BLOCK for r in self._rules
        )

    @classmethod
    def of(cls, compiled: CompiledPolicy) -> ExecTimePolicy:
        return cls(compiled)

    @property
    def rule_count(self) -> int:
        """Rules with an exec-time part (exact or not)."""
        return len(self._rules)

    @property
    def exact_block_rules(self) -> tuple[str, ...]:
        return tuple(r.original.id for r in self._rules if r.exact and r.original.action is RuleAction.BLOCK)

    def judge(self, file: ExecFile, user: ExecUser | None = None) -> Judgement:
        if not self.can_deny:
            return ALLOW
        if user is None and self._needs_user:
            return _NEED_USER
        proc = ProcessInfo(
            pid=0,
            ppid=0,
            name=posixpath.basename(file.path) or file.path,
            exe=file.path,
            sha256=file.sha256,
            uid=user.uid if user else None,
            username=user.username if user else None,
            package=file.package,
        )
        view = ProcessView.of(proc)
        best_block: tuple[int, CompiledRule, Finding] | None = None
        top_other = 0  # the highest specificity of a rule that may match and is not a block rule
        approved = False
        for index in self._compiled.process_index.candidates(view):
            restricted = self._compiled.rules[index]
            evidence = restricted.match_process(view)
            if evidence is None:
                continue
            entry = self._rules[index]
            rule = entry.original
            if rule.action is RuleAction.ALLOW:
                approved = True
            if rule.action is not RuleAction.BLOCK:
                top_other = max(top_other, int(rule.specificity))
                continue
            if not entry.exact:
                continue  # a block that may match: it can only make a deny stronger, never weaker
            if (
                best_block is None
                or int(rule.specificity) > best_block[0]
                or (int(rule.specificity) == best_block[0] and rule.index < best_block[1].index)
            ):
                finding = Finding(
                    rule_id=rule.id,
                    category=rule.category,
                    action=RuleAction.BLOCK,
                    process=proc,
                    reason=process_reason(evidence, rule.id),
                    evidence=evidence,
                    message=rule.message,
                    help_url=rule.help_url,
                )
                best_block = (int(rule.specificity), rule, finding)
        dependent = user is not None
        if best_block is not None and best_block[0] >= top_other:
            return Judgement(Verdict.DENY, best_block[2], dependent)
        if not self._unapproved_blocks or approved:
            return Judgement(Verdict.ALLOW, None, dependent)
        config = self.policy.unapproved
        if config.trust_package_manager and file.package is not None:
            return Judgement(Verdict.ALLOW, None, dependent)
        if user is None:
            return _NEED_USER
        extra = unapproved_finding(proc, config, self.policy.defaults, already=None)
        if extra is not None and extra.action is RuleAction.BLOCK:
            return Judgement(Verdict.DENY, extra, True)
        return Judgement(Verdict.ALLOW, None, True)


__all__ = ["ALLOW", "EXEC_TIME_KEYS", "ExecFile", "ExecTimePolicy", "ExecUser", "Judgement", "Verdict"]
