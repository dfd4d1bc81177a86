"""Agent CPU per exec: what `endpoint-agent run` spends on each process started on the machine.

The real service runs with exec events and a policy whose only block rule names a program
nothing launches (monitor mode; `enforce_scope_pid` is this benchmark besides): every exec is
checked at once and re-checked after 0.25 s and 1 s, and none of them matches anything. Full
scans are pushed out of the measured windows (`scan_interval` of an hour after the first one).

Three windows, each read as the service's own CPU time (user + system, children included):
an idle one (the baseline rate), then N/2 `/bin/true` launched one after the other, then N/2
in bursts of 20 started together. Each exec window runs on until the last re-check is due.
The figure is (window CPU - idle rate x window length) / launches, in ms per exec.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.report import Target, targets_block
from bench.service import AgentUnderTest, start_agent
from tests.support import ProcessReaper

SUMMARY = "agent CPU per exec on the machine (500 x /bin/true, one by one and in bursts of 20)"
PER_EXEC_TARGET_MS = 1.0
LIVING_TARGET_MS = 3.0
BURST = 20
IDLE_WINDOW = 6.0
TAIL = 1.5  # after the last launch: its re-checks (0.25 s, 1 s) fall inside the window
SETTLE = 2.0
TRUE = "/bin/true"
SLEEP = "/bin/sleep"
LIVING = 1.2  # seconds: past the last re-check, so every check of the exec finds it running


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("exec_cost")
    group.add_argument("--execs", type=int, default=500, help="/bin/true launches in all (default 500)")
    group.add_argument(
        "--living",
        type=int,
        default=100,
        help=f"launches of `sleep {LIVING}` in bursts of {BURST} (default 100)",
    )


def quiet_policy(name: str) -> str:
    return (
        "name: bench-exec-cost\nversion: 1\nmode: monitor\nrules:\n"
        f"  - id: bench-never\n    category: bench\n    action: block\n"
        f'    message: "nothing launches this"\n    process:\n      name: ["{name}"]\n'
    )


def agent_config() -> dict[str, object]:
    return {
        "enforce_scope_pid": os.getpid(),  # monitor mode anyway; never anything outside this benchmark
        "process_events": True,
        "scan_interval": 3600,  # no full scan inside the windows: only the per-exec work is measured
        "notify": False,
        "break_glass_file": "/nonexistent/ea-bench-break-glass",
    }


def sequential(n: int) -> None:
    for _ in range(n):
        subprocess.run([TRUE], stdin=subprocess.DEVNULL, check=True)


def bursts(n: int) -> None:
    while n > 0:
        batch = [subprocess.Popen([TRUE], stdin=subprocess.DEVNULL) for _ in range(min(BURST, n))]
        for proc in batch:
            proc.wait(10)
        n -= len(batch)
        time.sleep(0.05)  # bursts, not one long stream


def living(n: int) -> None:
    """Bursts of processes that outlive their re-checks (a compiler, a test): every check reads them."""
    running: list[subprocess.Popen[bytes]] = []
    while n > 0:
        batch = [
            subprocess.Popen([SLEEP, str(LIVING)], stdin=subprocess.DEVNULL) for _ in range(min(BURST, n))
        ]
        running.extend(batch)
        n -= len(batch)
        time.sleep(0.1)
    for proc in running:
        proc.wait(10 + LIVING)


@dataclass(frozen=True)
class Window:
    label: str
    execs: int
    seconds: float
    cpu: float

    def per_exec_ms(self, idle_rate: float) -> float:
        return 1000 * max(0.0, self.cpu - idle_rate * self.seconds) / self.execs


def measured(agent: AgentUnderTest, label: str, n: int, launch: Callable[[int], None]) -> Window:
    cpu0, t0 = agent.cpu_seconds(), time.monotonic()
    launch(n)
    time.sleep(TAIL)
    return Window(label, n, time.monotonic() - t0, agent.cpu_seconds() - cpu0)


def run(args: argparse.Namespace) -> list[Target]:
    n = int(args.execs)
    if n < 2:
        raise RuntimeError("--execs must be at least 2")
    print(f"exec_cost: {n} launches of {TRUE} (half one by one, half in bursts of {BURST})", flush=True)
    never = f"ea-bench-nx-{secrets.token_hex(3)}"  # unique on this machine, <= 15 chars (comm)
    with tempfile.TemporaryDirectory(prefix="ea-bench-exec-cost-") as tmp, ProcessReaper() as reaper:
        agent = start_agent(Path(tmp), quiet_policy(never), agent_config(), reaper=reaper, name="service")
        agent.wait_events()
        idle_rate = agent.idle_rate(SETTLE, IDLE_WINDOW)
        windows = [
            measured(agent, "one by one", n // 2, sequential),
            measured(agent, f"bursts of {BURST}", n - n // 2, bursts),
        ]
        alive = measured(agent, f"sleep {LIVING:g}", int(args.living), living) if args.living > 0 else None
        agent.stop()
    print(f"  idle: {1000 * idle_rate:.2f} ms of CPU per second (other execs on the machine included)")
    for w in windows:
        print(
            f"  {w.label:<12} {w.execs} execs in {w.seconds:.1f}s: {w.cpu:.3f}s CPU,"
            f" {w.per_exec_ms(idle_rate):.2f} ms per exec"
        )
    total = Window("all", n, sum(w.seconds for w in windows), sum(w.cpu for w in windows))
    print(f"  all {TRUE}: {total.per_exec_ms(idle_rate):.2f} ms of agent CPU per exec")
    targets = [Target(f"agent CPU per exec of {TRUE} (ms)", total.per_exec_ms(idle_rate), PER_EXEC_TARGET_MS)]
    if alive is not None:
        print(
            f"  {alive.label:<12} {alive.execs} execs in {alive.seconds:.1f}s (bursts, still running"
            f" at their re-checks): {alive.cpu:.3f}s CPU, {alive.per_exec_ms(idle_rate):.2f} ms per exec"
        )
        targets.append(
            Target(
                "agent CPU per exec, process still running (ms)",
                alive.per_exec_ms(idle_rate),
                LIVING_TARGET_MS,
            )
        )
    print("\n" + targets_block(targets))
    return targets
