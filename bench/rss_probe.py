"""`endpoint-agent run`, except that its scan job runs N scans back to back (for bench.memory).

    python -m bench.rss_probe --config C --policy P --state-dir D --scans 2000 --at 10,2000

Everything is wired as `run_service` wires it -- settings, logging, the composition root
(endpoint_agent/service/: store, policy provider, agent, exec watcher), its jobs on the APScheduler
thread pool -- but the scan job's
function is a loop of `Service.scan()` (tick plus status.json), since a tiny interval would
only make the scheduler spin. One JSON line per checkpoint: {"scans", "rss", "seconds"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time

import psutil


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss_probe")
    parser.add_argument("--config", required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--at", default="10,2000", help="comma-separated scan counts to report at")
    args = parser.parse_args(argv)
    checkpoints = {int(x) for x in args.at.split(",")}

    from endpoint_agent.daemon import configure_logging, run_jobs
    from endpoint_agent.service import build_service
    from endpoint_agent.settings import load_settings

    settings = load_settings({"config": args.config, "policy": args.policy, "state_dir": args.state_dir})
    configure_logging(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    service = build_service(settings)
    stop = threading.Event()
    me = psutil.Process()

    def scans() -> None:
        started = time.monotonic()
        try:
            for n in range(1, args.scans + 1):
                service.scan()
                if n in checkpoints:
                    out = {"scans": n, "rss": me.memory_info().rss, "seconds": time.monotonic() - started}
                    print(json.dumps(out), flush=True)
        finally:
            stop.set()

    jobs = [
        dataclasses.replace(job, func=scans, interval_seconds=86400) if job.name == "scan" else job
        for job in service.jobs()
    ]
    try:
        run_jobs(stop, jobs, on_state=service.write_status)
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
