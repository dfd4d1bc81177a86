"""`python -m bench [name ...]` (`make bench`): run benchmarks, print figures and PASS/FAIL.

Each benchmark is a module in this package with `SUMMARY`, `add_arguments(parser)` and
`run(args) -> list[Target]`; register it in BENCHMARKS below. With no name, the DEFAULT
ones run. Exit status: 0 all targets passed, 1 a target failed, 2 bad usage or a benchmark
could not run, 130 interrupted. Everything a benchmark starts is killed on the way out,
including on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from types import FrameType, ModuleType

from endpoint_agent.errors import AgentError

# name -> module; imported only when selected, so one broken benchmark does not stop others.
BENCHMARKS: dict[str, str] = {
    "scan": "bench.scan",
    "footprint": "bench.footprint",
    "reaction": "bench.reaction",
    "memory": "bench.memory",
    "exec_cost": "bench.exec_cost",
    "dns": "bench.dns",
    "exec_storm": "bench.exec_storm",
    "gate": "bench.gate",
    "idle": "bench.idle",
    "hostile": "bench.hostile",
    "console": "bench.console",
    "export": "bench.export",
    "fleet": "bench.fleet",
    "readside": "bench.readside",
    "ingest": "bench.ingest",
    "hotpath": "bench.hotpath",
}
DEFAULT = (
    "scan",
    "footprint",
    "reaction",
    "memory",
    "gate",
    "exec_storm",
    "idle",
    "hostile",
    "console",
    "dns",
    "export",
    "fleet",
    "readside",
)


def _load(name: str) -> ModuleType:
    return importlib.import_module(BENCHMARKS[name])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the endpoint agent. Available: "
        + "; ".join(f"{name}" for name in BENCHMARKS),
    )
    parser.add_argument(
        "names", nargs="*", metavar="name", help=f"benchmarks to run (default: {' '.join(DEFAULT)})"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    for name in BENCHMARKS:
        _load(name).add_arguments(parser)
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP behave like Ctrl-C: unwind through every `with` so spawned processes are reaped.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in BENCHMARKS:
            print(f"{name:<12} {_load(name).SUMMARY}")
        return 0
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        print(f"bench: unknown benchmark {', '.join(unknown)} (try --list)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    failed = False
    try:
        for name in args.names or DEFAULT:
            print(f"== {name}", flush=True)
            targets = _load(name).run(args)
            failed = failed or not all(target.passed for target in targets)
            print()
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except (AgentError, RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print("bench: " + ("some targets FAILED" if failed else "all targets passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
