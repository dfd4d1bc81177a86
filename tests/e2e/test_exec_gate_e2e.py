"""The exec gate in the real service with the real server: a denied exec reaches the security team.

The agent runs in the e2e harness's private PID namespace, which is also a private mount
namespace (`unshare --mount-proc`, private propagation): its gate marks that namespace's
mounts only. The blocked program is executed inside the namespace with `nsenter`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci_skip import require
from tests.support.e2e_harness import Agent, Server, wait_for
from tests.support.enforce_procs import pid_namespaces_available
from tests.support.gate_ns import unavailable
from tests.support.service_rig import policy_yaml, unique

pytestmark = pytest.mark.root


def exec_inside(agent: Agent, path: Path) -> subprocess.CompletedProcess[str]:
    argv = ["nsenter", f"--target={agent.ns.init_pid}", "--pid", "--mount", "--", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_a_denied_exec_reaches_endpoint_admin_violations(server: Server, agent: Agent) -> None:
    require(pid_namespaces_available() or unavailable())
    blocked, fine = unique("e2e-gate-blocked"), unique("e2e-gate-fine")
    for name in (blocked, fine):
        shutil.copy("/bin/true", agent.bin / name)
    agent.bin.chmod(0o755)
    server.publish(policy_yaml([("p2p-standin", "block", blocked)]))
    agent.configure(exec_gate="on")
    agent.start()

    def gate_on() -> dict[str, Any] | None:
        gate = agent.status().get("exec_gate") or {}
        return gate if gate.get("state") == "on" and agent.running_policy(1) else None

    wait_for("the exec gate to be on", gate_on, timeout=120, context=agent.log_text)
    refused = exec_inside(agent, agent.bin / blocked)
    assert refused.returncode != 0 and "not permitted" in refused.stderr, refused
    assert exec_inside(agent, agent.bin / fine).returncode == 0

    def denied_on_server() -> list[dict[str, Any]]:
        out = server.admin_cli("violations", "--since", "1h", "--format", "ndjson").stdout
        return [r for r in map(json.loads, out.splitlines()) if r["action"] == "denied"]

    [row] = wait_for("the denial on the server", denied_on_server, timeout=60, context=agent.log_text)
    assert row["rule_id"] == "p2p-standin" and row["exe"].endswith(blocked)
    assert row["process_name"] == blocked and row["category"] == "p2p"
    status = wait_for(
        "the denial counted in status",
        lambda: (g := agent.status().get("exec_gate") or {}).get("denied", 0) >= 1 and g,
        context=agent.log_text,
    )
    assert status["restarts"] == 0 and status["state"] == "on"


def test_a_program_judged_after_its_deadline_is_stopped_by_the_agent(server: Server, agent: Agent) -> None:
    """A 1 GiB binary under a sha256 rule: its first start runs (hashing outlasts the deadline);
    once the gate has the digest, the agent stops the running process and records it."""
    require(pid_namespaces_available() or unavailable())
    import hashlib
    import os

    huge = agent.bin / unique("e2e-gate-huge")
    shutil.copy("/bin/sleep", huge)
    os.truncate(huge, 1 << 30)  # sparse; still /bin/sleep
    agent.bin.chmod(0o755)
    digest = hashlib.sha256()
    with huge.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    rule = f"  - {{id: huge, category: p2p, action: block, process: {{sha256: '{digest.hexdigest()}'}}}}\n"
    server.publish(f"name: e2e\nversion: 1\nmode: enforce\nrules:\n{rule}")
    agent.configure(exec_gate="on")
    agent.start(scan_interval=3600)  # only the gate's late judgement can stop it in time
    wait_for(
        "the exec gate to be on",
        lambda: (agent.status().get("exec_gate") or {}).get("state") == "on",
        timeout=120,
        context=agent.log_text,
    )
    started = agent.ns.spawn([str(huge), "600"])
    from tests.support.enforce_procs import is_dead

    wait_for(
        "the late judgement to stop it", lambda: is_dead(started.pid), timeout=120, context=agent.log_text
    )
    rows = wait_for(
        "the stop recorded",
        lambda: [e.payload for e in agent.events("violation") if e.payload.get("rule_id") == "huge"],
        context=agent.log_text,
    )
    assert rows[0]["action"] == "killed"
