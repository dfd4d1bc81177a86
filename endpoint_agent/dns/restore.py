"""Undo the network guard without a running agent: `endpoint-agent restore-network`.

For the service manager (systemd `ExecStopPost=`, so even an agent killed with -9 gives the
resolver back at once) and for uninstall (`endpoint-agent uninstall` calls it): the resolver
configuration the agent saved is put back, and the agent's nftables table is deleted if the
agent had one. Safe at any time, any number of times; it never touches anything the agent did
not change. Also `python -m endpoint_agent.dns.restore [--state-dir DIR] [--config FILE]`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from endpoint_agent.errors import AgentError
from endpoint_agent.settings import AgentSettings


def restore_network(settings: AgentSettings) -> int:
    """Exit status: 0 done (or nothing to do)."""
    from endpoint_agent.clock import SystemClock
    from endpoint_agent.dns.service import NetGuard

    NetGuard(settings, clock=SystemClock(), record=lambda violations, events: None).recover_left_over()
    return 0


def restore_state_dir(state_dir: Path) -> int:
    from endpoint_agent.settings import load_settings

    return restore_network(load_settings({"state_dir": str(state_dir)}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m endpoint_agent.dns.restore", description=__doc__)
    parser.add_argument("--state-dir", help="the agent's state dir (default: as `endpoint-agent run`)")
    parser.add_argument("--config", help="the agent's config file")
    args = parser.parse_args(argv)
    try:
        from endpoint_agent.settings import load_settings

        return restore_network(load_settings({"state_dir": args.state_dir, "config": args.config}))
    except AgentError as exc:
        print(f"endpoint-agent restore-network: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
