"""The unapproved-apps check: interactive users' processes that no allow rule approves.

The scope keeps the operating system out of it: kernel threads, processes whose owner is
unknown, system accounts (uid below `min_uid`), `nobody` (65534) and excluded users are
never flagged; with `trust_package_manager`, neither is an executable owned by a system
package (ProcessInfo.package, set by the collector).
"""

from __future__ import annotations

from endpoint_agent.policy.model import UNAPPROVED_RULE_ID, Defaults, Unapproved, UnapprovedAction
from endpoint_agent.types import Evidence, Finding, ProcessInfo, RuleAction

NOBODY_UID = 65534
_RANK = {None: 0, RuleAction.REPORT: 1, RuleAction.BLOCK: 2}


def in_unapproved_scope(proc: ProcessInfo, config: Unapproved) -> bool:
    """True when the process belongs to an interactive user the check applies to."""
    if proc.kernel_thread or proc.uid is None:
        return False
    if proc.uid < config.min_uid or proc.uid == NOBODY_UID:
        return False
    return proc.username not in config.exclude_users


def unapproved_finding(
    proc: ProcessInfo, config: Unapproved, defaults: Defaults, *, already: RuleAction | None
) -> Finding | None:
    """The finding for an unapproved process, or None (check off, out of scope, trusted, or a
    finding at least as strong, `already`, was made for the process)."""
    if config.action is UnapprovedAction.OFF:
        return None
    action = RuleAction.BLOCK if config.action is UnapprovedAction.BLOCK else RuleAction.REPORT
    if _RANK[already] >= _RANK[action]:
        return None
    if not in_unapproved_scope(proc, config):
        return None
    if config.trust_package_manager and proc.package is not None:
        return None
    what = proc.exe or proc.name
    evidence = (
        Evidence("uid", f">={config.min_uid}", str(proc.uid)),
        Evidence("approved", "an allow rule", what),
    )
    reason = (
        f"process {proc.name!r} ({what}, user {proc.username or proc.uid}) is not approved by any allow rule "
        f"(rule {UNAPPROVED_RULE_ID}, unapproved apps: {config.action.value})"
    )
    return Finding(
        rule_id=UNAPPROVED_RULE_ID,
        category=config.category,
        action=action,
        process=proc,
        reason=reason,
        evidence=evidence,
        message=config.message or defaults.message,
        help_url=config.help_url or defaults.help_url,
        severity=config.severity or defaults.severity,
    )
