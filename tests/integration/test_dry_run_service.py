"""The service's safety dry run judges a new policy with the service's own collector and guard.

Server mode against the REAL server (uvicorn on 127.0.0.1), the composition root built from the
settings as `endpoint-agent run` builds it, one real poll. Kill-safe: the enforcer is a recording
double, and the block rules name only the test's uniquely named stand-ins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.detect.sandbox import LineReader, LoopbackNamespace, missing_requirements
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.service import Service, build_service
from endpoint_agent.settings import AgentSettings
from endpoint_agent.sync.service import PolicySyncService
from tests.support import ProcessReaper
from tests.support.ci_skip import require
from tests.support.doubles import RecordingEnforcer, RecordingNotifier
from tests.support.enforce_procs import python_env, python_sleeper
from tests.support.server import LiveServer, run_server

# Inside the sandbox namespace: a listener on a port of that namespace's own loopback.
LISTENER = """
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
print(srv.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with run_server(tmp_path / "server") as live:
        yield live


def start_service(server: LiveServer, state: Path, **settings: Any) -> Service:
    values: dict[str, Any] = {
        "server": server.base_url,
        "enroll_secret": server.enroll_secret,
        "public_keys": [str(server.public_key)],
        "state_dir": str(state),
        "process_events": False,
        "notify": False,
        "exec_gate": "off",  # never on this machine's mounts
        "dns_filter": "off",  # never this machine's resolver
        **settings,
    }
    state.mkdir(parents=True, exist_ok=True)
    return build_service(
        AgentSettings.model_validate(values), enforcer=RecordingEnforcer(), notifier=RecordingNotifier()
    )


def activate(server: LiveServer, service: Service, rule: str) -> tuple[str, dict[str, Any]]:
    """Publish a one-rule enforce policy, poll once; the active policy's monitor reason and the event."""
    text = f"name: dry-run\nversion: 1\nmode: enforce\nrules:\n  - {rule}\n"
    response = server.publish(text)
    assert response.status_code == 200, response.text
    sync = service.policy
    assert isinstance(sync, PolicySyncService)
    assert sync.poll() == "activated"
    current = sync.current()
    assert current is not None and current.version == 1
    with ViolationStore.open(service.settings.store_path) as store:
        [event] = [e.payload for e in store.events(kind="agent") if e.payload["type"] == "policy_unsafe"] or [
            {}
        ]
    return current.monitor_reason or "", event


def test_the_dry_run_sees_sockets_in_other_network_namespaces(server: LiveServer, tmp_path: Path) -> None:
    """A block rule that matches only a listener inside a sandbox namespace is seen to match it."""
    require(missing_requirements())
    service = start_service(server, tmp_path / "state")
    try:
        with LoopbackNamespace() as ns:
            child = ns.popen([sys.executable, "-c", LISTENER], stdout_pipe=True)
            port = int(LineReader(child, "listener").readline(timeout=20))
            rule = f"{{id: sandboxed, category: p2p, action: block, network: {{local_port: {port}}}}}"
            reason, event = activate(server, service, rule)
    finally:
        service.close()
    # The listener is the test's own child, so protected ("started by the agent"): unsafe, monitor only.
    assert reason.startswith("policy unsafe: ") and "rule sandboxed)" in reason, reason
    assert event["detail"]["would_stop"] == 1


def detached(argv: list[str]) -> int:
    """Start `argv` as nobody's child here (reparented away), so the plain guard does not protect
    it as "started by the agent"; returns its PID once it runs under its own name."""
    out = subprocess.run(
        ["sh", "-c", '"$@" >/dev/null 2>&1 </dev/null & echo $!', "sh", *argv],
        env=python_env(),
        capture_output=True,
        check=True,
        timeout=30,
    )
    pid = int(out.stdout)
    deadline = time.monotonic() + 20
    while psutil.Process(pid).name() != Path(argv[0]).name:
        assert time.monotonic() < deadline, "the stand-in did not start"
        time.sleep(0.02)
    return pid


def test_the_dry_run_uses_the_services_guard(server: LiveServer, tmp_path: Path) -> None:
    """Under a test enforcement scope the service may not touch the stand-in: the dry run knows it."""
    name = f"ea-dry-{uuid.uuid4().hex[:6]}"
    with ProcessReaper() as reaper:
        scope = reaper.track(subprocess.Popen(["sleep", "120"]))
        standin = detached(python_sleeper(name, tmp_path))
        try:
            service = start_service(server, tmp_path / "state", enforce_scope_pid=scope.pid)
            try:
                rule = f'{{id: standin, category: p2p, action: block, process: {{name: ["{name}"]}}}}'
                reason, event = activate(server, service, rule)
            finally:
                service.close()
        finally:
            os.kill(standin, signal.SIGKILL)
    assert reason.startswith("policy unsafe: its block rules match 1 protected process"), reason
    assert "outside the enforcement scope" in reason and event["detail"]["protected"]
