"""Event-driven reaction for real: the kernel's exec events, the fast path, overruns, the polling fallback.

Root on Linux only (the process connector needs it). KILL SAFETY: agents that may stop processes
here either record stops with a double (in-process), or run with `enforce_scope_pid` set to this
test process (only its descendants can be signalled) and a policy whose only block rule names a
unique stand-in; the polling fallback runs inside a private PID namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.agent import Agent
from endpoint_agent.collect.incremental import IncrementalCollector
from endpoint_agent.collect.proc_events import open_event_source
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.watch import ExecWatcher
from tests.support import ProcessReaper, SpawnFn, die_with_parent, named_executable
from tests.support.doubles import RecordingEnforcer
from tests.support.enforce_procs import PidNamespace, pid_namespaces_available
from tests.support.reaction_rig import policy_yaml, recording_agent, unique, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process connector is Linux only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="process events need root"),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def watcher_rig(
    tmp_path: Path,
) -> Iterator[tuple[Agent, ViolationStore, IncrementalCollector, RecordingEnforcer, ExecWatcher, str]]:
    blocked = unique("ea-react")
    agent, collector, enforcer, store = recording_agent(tmp_path, blocked)
    source = open_event_source()
    assert source is not None, "process events unavailable although running as root (see the log)"
    watcher = ExecWatcher(
        source,
        react=lambda pids: agent.react(lambda: collector.snapshot_of(pids)),
        rescan=agent.tick,
        forget=collector.forget,
    )
    watcher.start()
    try:
        yield agent, store, collector, enforcer, watcher, blocked
    finally:
        watcher.stop()
        store.close()


def test_exec_events_drive_the_fast_path_which_records_and_stops(
    watcher_rig: tuple[Agent, ViolationStore, IncrementalCollector, RecordingEnforcer, ExecWatcher, str],
    spawn: SpawnFn,
    reaper: ProcessReaper,
) -> None:
    agent, store, collector, enforcer, watcher, blocked = watcher_rig
    standin = spawn(blocked, program="sleep")
    # The reaction counts once its pipeline run returns, just after the stop: wait for both.
    wait_for(
        "the fast path to stop the stand-in", lambda: standin.pid in enforcer.pids and agent.reactions >= 1
    )
    assert watcher.stats.execs >= 1
    assert agent.scans == 0  # no full scan ran: the exec event alone got it
    [violation] = [e.payload for e in store.events(kind="violation")]
    assert (violation["pid"], violation["process_name"], violation["action"]) == (
        standin.pid,
        blocked,
        "killed",
    )
    # Its exit event drops what the collector cached about it, before any scan.
    assert standin.pid in collector.cache
    reaper.reap_one(standin.pid)
    wait_for("the exit event to drop the cached record", lambda: standin.pid not in collector.cache)
    assert len(enforcer.pids) == 1  # re-checks after the stop did not stop it again


def test_an_overrun_triggers_a_full_rescan() -> None:
    source = open_event_source(rcvbuf=1)  # the kernel rounds up to its minimum: a few events
    assert source is not None
    rescans: list[int] = []
    watcher = ExecWatcher(source, react=lambda pids: None, rescan=lambda: rescans.append(1))
    try:
        for _ in range(40):  # a burst while nobody reads: the buffer overflows
            subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
        for _ in range(200):
            watcher.step(max_wait=0.5)
            if rescans:
                break
        assert rescans and watcher.stats.overruns >= 1
    finally:
        watcher.stop()


# -- the service ---------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENDPOINT_AGENT_")}
    env.update(extra)
    return env


class Service:
    def __init__(self, tmp: Path, blocked: str, settings: dict[str, object]) -> None:
        self.state = tmp / "state"
        self.log = tmp / "agent.log"
        (tmp / "policy.yaml").write_text(policy_yaml(blocked))
        config = {
            "notify": False,
            "break_glass_file": str(tmp / "break-glass"),
            "exec_gate": "off",
            **settings,
        }
        (tmp / "agent.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
        self.argv = [
            sys.executable, "-m", "endpoint_agent", "run", "--config", str(tmp / "agent.yaml"),
            "--policy", str(tmp / "policy.yaml"), "--state-dir", str(self.state),
        ]  # fmt: skip

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def wait_scans(self, n: int) -> dict[str, Any]:
        wait_for(f"{n} scan(s); log:\n{self.log_text()}", lambda: self.status().get("scans", 0) >= n, 60)
        return self.status()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def test_the_service_stops_a_blocked_program_right_at_its_exec(tmp_path: Path, reaper: ProcessReaper) -> None:
    blocked = unique("ea-svc")
    # One scan at start, the next in an hour: only the exec event can get the stand-in.
    service = Service(tmp_path, blocked, {"enforce_scope_pid": os.getpid(), "scan_interval": 3600})
    with service.log.open("wb") as out:
        agent = reaper.track(
            subprocess.Popen(
                service.argv, stdout=out, stderr=out, cwd=REPO, env=clean_env(), preexec_fn=die_with_parent()
            )
        )
    status = service.wait_scans(1)
    assert status["process_events"]["mode"] == "events" and status["scan_interval"] == 3600
    exe = named_executable(blocked, tmp_path, "sleep")
    standin = reaper.track(subprocess.Popen([str(exe), "600"]))
    assert standin.wait(30) == -signal.SIGTERM, service.log_text()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    store = ViolationStore.open_existing(service.state / "violations.sqlite3")
    assert store is not None
    with store:
        [killed] = [e.payload for e in store.events(kind="violation")]
    assert (killed["pid"], killed["action"]) == (standin.pid, "killed")
    assert service.status()["scans"] == 1 and service.status()["reactions"] >= 1


@pytest.mark.skipif(pid_namespaces_available() is not None, reason=pid_namespaces_available() or "")
def test_polling_takes_over_when_the_event_source_cannot_start(tmp_path: Path) -> None:
    """Inside a PID namespace the kernel refuses process events: the service scans every 5 s instead."""
    blocked = unique("ea-poll")
    service = Service(tmp_path, blocked, {})  # default scan interval: auto
    exe = named_executable(blocked, tmp_path, "sleep")
    with PidNamespace() as ns, service.log.open("wb") as out:
        ns.spawn(service.argv, env=clean_env(), stdout=out, stderr=out, cwd=str(REPO))
        status = service.wait_scans(1)
        assert status["process_events"] == {"mode": "polling"} and status["scan_interval"] == 5.0
        assert "inside a PID namespace" in service.log_text()
        standin = ns.spawn([str(exe), "600"])
        assert standin.wait(60) == -signal.SIGTERM, service.log_text()  # stopped by a periodic scan
        assert service.status().get("reactions", 0) == 0
