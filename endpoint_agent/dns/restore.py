"""`python -m endpoint_agent.dns.restore [--state-dir DIR] [--config FILE]`: undo the network guard.

For the service manager (systemd `ExecStopPost=`, so even an agent killed with -9 gives the
resolver back at once) and for uninstall scripts: the resolver configuration the agent saved
is put back, and the agent's nftables table is deleted if the agent had one. Safe to run at
any time, any number of times; it never touches anything the agent did not change.
Exit 0: done (or nothing to do); 2: something could not be restored (the message says what).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from endpoint_agent.errors import AgentError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m endpoint_agent.dns.restore", description=__doc__)
    parser.add_argument("--state-dir", help="the agent's state dir (default: as `endpoint-agent run`)")
    parser.add_argument("--config", help="the agent's config file")
    args = parser.parse_args(argv)
    try:
        from endpoint_agent.clock import SystemClock
        from endpoint_agent.dns.service import NetGuard
        from endpoint_agent.settings import load_settings

        overrides = {"state_dir": args.state_dir, "config": args.config, "dns_filter": "off"}
        settings = load_settings(overrides)
        NetGuard(settings, clock=SystemClock(), record=lambda violations, events: None).recover_left_over()
    except AgentError as exc:
        print(f"endpoint-agent restore: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
