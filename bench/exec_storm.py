"""Agent CPU per exec during a build-like storm: two shell loops of `/bin/true` (~1,000 execs/s).

The real service runs with exec events and a one-rule policy that names a program nothing
launches (monitor mode; `enforce_scope_pid` is this benchmark besides), so every exec can be
skipped once its binary is known to match no rule. A second run uses `policies/default.yaml`
(monitor mode), whose command-line, network and P2P rules can match any binary: its execs
still get the full check, so its figure is printed for information, not as a target.

Each run: an idle window (the baseline rate), then STORM seconds of two `bash` loops running
`/bin/true` as fast as they can, plus TAIL seconds for the last re-checks. The agent's own CPU
time (user + system, children included) is read at both ends of each window; the loops count
their execs. Figures: (storm CPU - idle rate x window) / execs, in ms per exec, and the agent's
CPU over the CPU the loops themselves used.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.exec_cost import agent_config, quiet_policy
from bench.footprint import monitor_policy
from bench.report import Target, targets_block
from bench.service import AgentUnderTest, start_agent
from tests.support import ProcessReaper, die_with_parent

SUMMARY = "agent CPU per exec during a storm of two `/bin/true` loops (~1,000 execs/s)"
PER_EXEC_TARGET_MS = 0.1
SHARE_TARGET = 0.10  # agent CPU / the storm's own CPU
LOOPS = 2
IDLE_WINDOW = 5.0
TAIL = 1.5
SETTLE = 2.0
LOOP = (
    'end=$((SECONDS + {seconds})); n=0; while [ "$SECONDS" -lt "$end" ]; do /bin/true; n=$((n + 1)); done;'
    ' echo "$n"'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("exec_storm")
    group.add_argument("--storm-seconds", type=int, default=10, help="length of the storm (default 10)")
    group.add_argument(
        "--storm-default-policy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure with policies/default.yaml (default on)",
    )


@dataclass(frozen=True)
class Storm:
    policy: str
    execs: int
    seconds: float
    agent_cpu: float
    idle_rate: float
    workload_cpu: float

    @property
    def agent_storm_cpu(self) -> float:
        return max(0.0, self.agent_cpu - self.idle_rate * self.seconds)

    @property
    def per_exec_ms(self) -> float:
        return 1000 * self.agent_storm_cpu / max(1, self.execs)

    @property
    def share(self) -> float:
        return self.agent_storm_cpu / self.workload_cpu if self.workload_cpu > 0 else float("inf")

    def line(self) -> str:
        return (
            f"  {self.policy:<22} {self.execs} execs in {self.seconds:.1f}s"
            f" ({self.execs / self.seconds:.0f}/s):"
            f" agent {self.agent_cpu:.3f}s CPU (idle {1000 * self.idle_rate:.1f} ms/s),"
            f" {self.per_exec_ms:.3f} ms per exec; loops used {self.workload_cpu:.2f}s CPU"
        )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def storm(agent: AgentUnderTest, seconds: int, reaper: ProcessReaper) -> tuple[int, float, float, float]:
    """Run the loops; (execs, window seconds, agent CPU in the window, the loops' own CPU)."""
    script = LOOP.format(seconds=seconds)
    cpu0, t0, kids0 = agent.cpu_seconds(), time.monotonic(), _children_cpu()
    loops = [
        reaper.track(
            subprocess.Popen(
                ["bash", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )
        for _ in range(LOOPS)
    ]
    execs = 0
    for loop in loops:
        out, _ = loop.communicate(timeout=seconds + 30)
        execs += int(out.strip() or 0)
    workload = _children_cpu() - kids0
    time.sleep(TAIL)
    return execs, time.monotonic() - t0, agent.cpu_seconds() - cpu0, workload


def measure(label: str, policy: str, seconds: int) -> Storm:
    with tempfile.TemporaryDirectory(prefix="ea-bench-exec-storm-") as tmp, ProcessReaper() as reaper:
        agent = start_agent(Path(tmp), policy, agent_config(), reaper=reaper, name="service")
        agent.wait_events()
        idle_rate = agent.idle_rate(SETTLE, IDLE_WINDOW)
        execs, window, cpu, workload = storm(agent, seconds, reaper)
        agent.stop()
    return Storm(label, execs, window, cpu, idle_rate, workload)


def run(args: argparse.Namespace) -> list[Target]:
    seconds = int(args.storm_seconds)
    if seconds < 1:
        raise RuntimeError("--storm-seconds must be at least 1")
    if not os.path.exists("/bin/true"):
        raise RuntimeError("/bin/true is missing")
    print(f"exec_storm: {LOOPS} bash loops of /bin/true for {seconds}s, the service listening", flush=True)
    never = f"ea-bench-nx-{secrets.token_hex(3)}"
    quiet = measure("one-rule policy", quiet_policy(never), seconds)
    print(quiet.line(), flush=True)
    if args.storm_default_policy:
        full = measure("policies/default.yaml", monitor_policy(), seconds)
        print(full.line() + "  (information: its rules can match any binary)")
    targets = [
        Target("agent CPU per exec in a storm (ms)", quiet.per_exec_ms, PER_EXEC_TARGET_MS),
        Target("agent CPU / the storm's own CPU", quiet.share, SHARE_TARGET),
    ]
    print("\n" + targets_block(targets))
    return targets
