"""Policy texts for the server integration tests, and stored versions for the store tests."""

from __future__ import annotations

from server_stub.store import NewPolicy


def policy_yaml(version: int, name: str = "corporate-baseline") -> str:
    return f"""
name: {name}
version: {version}
mode: monitor
rules:
  - id: p2p-qbittorrent
    category: p2p
    action: block
    process:
      name: ["qbittorrent*"]
"""


def stored_policy(version: int, rollout: int = 100) -> NewPolicy:
    """A version as the store keeps it (its envelope is not a real signature: stores do not check)."""
    return NewPolicy(
        version=version,
        envelope=f'{{"payload": "v{version}", "signatures": []}}',
        etag=f'"etag-{version}"',
        key_id="0123456789abcdef",
        policy_name="base",
        fleet_id="default",
        rollout_percent=rollout,
    )
