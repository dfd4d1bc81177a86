"""Policy texts for the server integration tests."""

from __future__ import annotations


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
