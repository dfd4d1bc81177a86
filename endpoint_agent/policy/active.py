"""The policy the agent is running now, and the one seam every policy source plugs into.

active = ActivePolicy.from_policy(policy, source="policies/default.yaml")
provider.current()   # -> ActivePolicy | None (a local file, or policy sync)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from endpoint_agent.policy.compile import CompiledPolicy, compile_policy
from endpoint_agent.policy.model import Policy


@dataclass(frozen=True)
class ActivePolicy:
    """A validated, compiled policy the agent is running, and where it came from."""

    compiled: CompiledPolicy
    name: str
    version: int
    mode: str
    source: str
    # Why this policy may only monitor whatever its own mode says (found unsafe when it was
    # activated, or expired); None when it may enforce.
    monitor_reason: str | None = None

    @classmethod
    def from_policy(cls, policy: Policy, source: str) -> ActivePolicy:
        return cls(compile_policy(policy), policy.name, int(policy.version), str(policy.mode), source)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "mode": self.mode,
            "source": self.source,
        }
        if self.monitor_reason is not None:
            out["monitor_reason"] = self.monitor_reason
        return out


class PolicyProvider(Protocol):
    """Where the active policy comes from: a local file (sync.local) or policy sync (sync.service)."""

    def current(self) -> ActivePolicy | None:
        """The policy to scan with now, or None when there is none yet (nothing is evaluated)."""
        ...


__all__ = ["ActivePolicy", "PolicyProvider"]
