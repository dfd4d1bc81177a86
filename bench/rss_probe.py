"""The service's scan loop, driven as fast as it goes, reporting its own RSS (for bench.memory).

    python -m bench.rss_probe --policy P --state-dir D --scans 2000 --at 10,2000

Wired exactly as `endpoint-agent run` (settings, store, policy provider, agent, the exec
watcher, the scheduler's imports), then `Service.scan()` -- tick plus status.json -- back to
back. One JSON line per checkpoint: {"scans": n, "rss": bytes, "seconds": since the first scan}.
Enforcement is scoped to the parent (the benchmark) and the policy is expected in monitor mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import psutil


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss_probe")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--at", default="10,2000", help="comma-separated scan counts to report at")
    args = parser.parse_args(argv)
    checkpoints = {int(x) for x in args.at.split(",")}

    import apscheduler.schedulers.background  # noqa: F401 -- the service has it loaded too

    from endpoint_agent.agent import build_agent
    from endpoint_agent.daemon import Service, build_policy_provider, open_store
    from endpoint_agent.settings import load_settings
    from endpoint_agent.watch import start_reaction

    overrides = {
        "config": args.config,
        "policy": args.policy,
        "state_dir": args.state_dir,
        "enforce_scope_pid": os.getppid(),
    }
    settings = load_settings(overrides, environ={})
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    agent = build_agent(settings, store=store, policy=build_policy_provider(settings, store))
    service = Service(settings, agent)
    service.reaction = start_reaction(settings, agent, rescan=service.scan)
    me = psutil.Process()
    started = time.monotonic()
    try:
        for n in range(1, args.scans + 1):
            service.scan()
            if n in checkpoints:
                out = {"scans": n, "rss": me.memory_info().rss, "seconds": time.monotonic() - started}
                print(json.dumps(out), flush=True)
    finally:
        if service.reaction is not None:
            service.reaction.stop()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
