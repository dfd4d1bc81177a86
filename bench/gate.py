"""The exec gate's cost: what a gated exec pays, and what the gate spends (root, Linux >= 5.0).

Everything gated runs in a private mount namespace (tests/support/gate_ns.py): the real
supervisor, the real gate process and fanotify marks on that namespace's mounts only. The
policy denies a program nothing runs (enforce mode), so every exec is judged and allowed.

* fork-exec loop: a shell loop of `/bin/true`, gated (inside the namespace) vs ungated (outside),
  rounds interleaved, medians compared. `/bin/true` is a system file: after its first exec the
  kernel allows it without asking (an ignore mark). The same loop over a copy in /tmp (asked
  every time, answered from the cache) is printed for information.
* storm: two loops of the /tmp copy at once (every exec reaches the gate): the CPU of the gate's
  side of the agent (supervisor + gate process) per exec, and the gate's own p99 decision time.
* deadline: the longest any exec was held, against the 100 ms deadline.
* a 1 GiB (sparse) binary under a sha256 rule: its first exec is not held past the deadline
  (hashing goes on in the background), and a later exec is denied.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.report import Target, targets_block
from tests.support.gate_ns import GateNamespace, shell_loops, unavailable

SUMMARY = "exec gate: gated/ungated fork-exec loop, CPU per gated exec, p99 decision, 1 GiB binary"
WALL_RATIO_TARGET = 1.10
CPU_PER_EXEC_TARGET_MS = 0.1
P99_TARGET_MS = 1.0
DEADLINE_MS = 100.0
DEADLINE_SLACK_MS = 50.0  # scheduling on a busy 2-core machine
HUGE_FIRST_EXEC_TARGET_S = 0.5
IDLE_WINDOW = 3.0

POLICY = """
name: bench-gate
version: 1
mode: enforce
rules:
  - {id: never-run, action: block, process: {name: ea-bench-gate-never-runs}}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gate")
    group.add_argument("--gate-execs", type=int, default=2000, help="execs per loop round (default 2000)")
    group.add_argument("--gate-rounds", type=int, default=5, help="interleaved rounds (default 5)")


def _ratio(ns: GateNamespace, program: str, count: int, rounds: int) -> tuple[float, float, float]:
    gated, ungated = [], []
    ns.call("loop", program=program, count=min(count, 200))  # warm: first execs judged and cached
    for _ in range(rounds):
        ungated.append(shell_loops(program, count)["wall"])
        gated.append(ns.call("loop", program=program, count=count, timeout=600)["wall"])
    g, u = statistics.median(gated), statistics.median(ungated)
    return g / u, g, u


def _storm(ns: GateNamespace, program: str, count: int) -> tuple[float, dict[str, object]]:
    """Two loops at once; (gate-side CPU ms per exec beyond its idle rate, the gate's status after)."""
    idle0, t0 = ns.call("cpu"), time.monotonic()
    time.sleep(IDLE_WINDOW)  # the idle rate: supervision pings, a status now and then
    idle_rate = (ns.call("cpu") - idle0) / (time.monotonic() - t0)
    before = ns.status()
    cpu0 = ns.call("cpu")
    storm = ns.call("loop", program=program, count=count * 2, loops=2, timeout=600)
    spent = max(0.0, ns.call("cpu") - cpu0 - idle_rate * storm["wall"])
    time.sleep(0.6)  # one more ping: the stats of the storm
    after = ns.status()
    decided = int(after.get("decisions", 0)) - int(before.get("decisions", 0))
    print(
        f"  storm of {program}: {storm['execs']:.0f} execs in {storm['wall']:.2f}s"
        f" ({storm['execs'] / storm['wall']:.0f}/s), {decided} reached the gate; gate side {spent:.3f}s CPU"
        f" above idle ({1000 * idle_rate:.1f} ms/s);"
        f" p50 {after.get('p50_ms')} ms, p99 {after.get('p99_ms')} ms,"
        f" cache hit rate {after.get('cache_hit_rate')}"
    )
    return 1000 * spent / max(1.0, storm["execs"]), after


def run(args: argparse.Namespace) -> list[Target]:
    why = unavailable()
    if why is not None:
        print(f"  skipped: {why}")
        return []
    count, rounds = args.gate_execs, args.gate_rounds
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="ea-bench-gate-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        copy = base / "true-copy"
        shutil.copy("/bin/true", copy)
        with GateNamespace(POLICY) as ns:
            ns.wait_ready()
            ratio, g, u = _ratio(ns, "/bin/true", count, rounds)
            print(f"  /bin/true loop x{count}: gated {g:.3f}s, ungated {u:.3f}s (median of {rounds})")
            targets.append(Target("fork-exec loop wall time, gated / ungated", ratio, WALL_RATIO_TARGET))
            info, g2, u2 = _ratio(ns, str(copy), count, rounds)
            print(f"  /tmp copy loop x{count} (asked every exec): gated {g2:.3f}s, ungated {u2:.3f}s,")
            print(f"    ratio {info:.3f} (information: the gate answers every exec from its cache)")
            per_exec_ms, _ = _storm(ns, "/bin/true", count)
            targets.append(
                Target("gate CPU per exec, /bin/true storm (ms)", per_exec_ms, CPU_PER_EXEC_TARGET_MS)
            )
            worst, after = _storm(ns, str(copy), count)
            print(f"    {worst:.3f} ms gate CPU per exec when every exec is asked (information)")
            targets.append(Target("cached decision p99 (ms)", float(after.get("p99_ms") or 0), P99_TARGET_MS))
            targets.append(
                Target(
                    "longest exec held (ms)", float(after.get("max_ms") or 0), DEADLINE_MS + DEADLINE_SLACK_MS
                )
            )
        targets.extend(_huge(base))
    print(targets_block(targets))
    return targets


def _huge(base: Path) -> list[Target]:
    huge = base / "huge-tool"
    shutil.copy("/bin/true", huge)
    os.truncate(huge, 1 << 30)
    digest = hashlib.sha256()
    with huge.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    policy = (
        "name: bench-huge\nversion: 1\nmode: enforce\nrules:\n"
        f"  - {{id: huge, action: block, process: {{sha256: '{digest.hexdigest()}'}}}}\n"
    )
    with GateNamespace(policy) as ns:
        ns.wait_ready()
        first = ns.run([str(huge)])
        started = time.monotonic()
        while (later := ns.run([str(huge)]))["errno"] != errno.EPERM and time.monotonic() - started < 120:
            time.sleep(0.25)
        judged_in = time.monotonic() - started
    print(
        f"  1 GiB binary: first exec {first['seconds']:.3f}s (rc {first['rc']}),"
        f" denied {judged_in:.1f}s later: {later['errno'] == errno.EPERM}"
    )
    return [
        Target("1 GiB binary: first exec held (s)", float(first["seconds"]), HUGE_FIRST_EXEC_TARGET_S),
        Target("1 GiB binary: later exec not denied (0/1)", float(later["errno"] != errno.EPERM), 0),
    ]
