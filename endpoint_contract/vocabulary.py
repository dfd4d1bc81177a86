"""The fixed values of the contract: what was done (`action`), how bad it is (`severity`), the mode."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What the agent actually did about a finding (the `action` key of a violation)."""

    REPORTED = "reported"
    WOULD_BLOCK = "would_block"
    KILLED = "killed"
    SUSPENDED = "suspended"
    KILL_FAILED = "kill_failed"
    PROTECTED = "protected"
    CONNECTION_BLOCKED = "connection_blocked"  # refused by the DNS filter or the agent's nftables table
    DENIED = "denied"  # the exec gate refused the program before it ran


class Severity(StrEnum):
    """How urgent a rule's violations are; a policy's rules default to `medium`."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """1 (low) to 4 (critical), for "at least this severe" filters."""
        return _RANK[self]


_RANK = {Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}


class Mode(StrEnum):
    """A policy's mode, and the agent's effective one (monitor while a safety rail says so)."""

    MONITOR = "monitor"  # findings are reported; nothing is stopped
    ENFORCE = "enforce"  # findings of `block` rules stop the process


__all__ = ["Mode", "Outcome", "Severity"]
