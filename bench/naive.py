"""The naive agent the service's footprint is compared to: a full psutil scan every INTERVAL seconds.

    python -m bench.naive 5

One scan is what any psutil-based agent pays: every process with the same attributes the agent
records (`process_iter` with attrs) and every inet socket (`net_connections`). Prints "ready"
after its first scan, then scans on a fixed schedule until it is killed.
"""

from __future__ import annotations

import sys
import time

import psutil

from endpoint_agent.collect.snapshot import PROCESS_ATTRS


def full_scan() -> int:
    processes = sum(1 for proc in psutil.process_iter(PROCESS_ATTRS, ad_value=None) if proc.info)
    return processes + len(psutil.net_connections(kind="inet"))


def main(argv: list[str]) -> int:
    interval = float(argv[0]) if argv else 5.0
    full_scan()
    print("ready", flush=True)
    next_at = time.monotonic() + interval
    while True:
        time.sleep(max(0.0, next_at - time.monotonic()))
        full_scan()
        next_at += interval


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
