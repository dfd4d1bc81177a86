"""No record is lost to bytes: a process run from a directory whose name is not UTF-8 (`bad\\xff`),
with an argument that is not UTF-8 either, goes through `scan --json`, the agent service's local
store, the upload and the real server (SQLite and PostgreSQL), escaped losslessly all the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from endpoint_contract.text import unescape_bytes
from tests.support.contract import WIRE_KEYS
from tests.support.e2e_harness import Agent, Server, wait_for
from tests.support.enforce_procs import SLEEPER, pid_namespaces_available, python_env
from tests.support.service_rig import clean_env, policy_yaml, unique
from tests.support.spawn import named_executable

_why_not = pid_namespaces_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]

ARG = b"--tag=caf\xe9\\x41"  # a Latin-1 byte, and a literal backslash that must survive as such


def test_a_non_utf8_path_and_argument_reach_the_server_escaped(
    server: Server, agent: Agent, tmp_path: Path
) -> None:
    name = unique("e2e-u8")
    bad_dir = os.fsencode(tmp_path) + b"/bad\xff"
    os.mkdir(bad_dir)
    exe = named_executable(name, Path(os.fsdecode(bad_dir)), "python")
    exe_bytes = os.fsencode(exe)
    assert b"\xff" in exe_bytes
    agent.ns.spawn([os.fsdecode(exe_bytes), "-S", "-s", "-c", SLEEPER, os.fsdecode(ARG)], env=python_env())
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml([("u8-standin", "report", name)]))

    # scan --json: one finding, with the path and the argument escaped, and the bytes recoverable.
    done = subprocess.run(
        [sys.executable, "-m", "endpoint_agent", "scan", "--policy", str(policy), "--json"],
        capture_output=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 1, done.stderr
    [finding] = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert finding["process_name"] == name
    assert "bad\\xff" in finding["exe"] and unescape_bytes(finding["exe"]) == exe_bytes
    assert "caf\\xe9\\\\x41" in finding["cmdline"]
    assert unescape_bytes(finding["cmdline"].split(" ")[-1]) == ARG

    # The service: recorded locally, uploaded, stored and listed by the server, nothing refused.
    server.publish(policy_yaml([("u8-standin", "report", name)]))
    agent.start()
    [row] = wait_for(
        "the violation on the server", lambda: server.items("/violations"), context=agent.log_text
    )
    assert row.keys() >= WIRE_KEYS
    assert (row["exe"], row["cmdline"]) == (finding["exe"], finding["cmdline"])
    assert unescape_bytes(row["exe"]) == exe_bytes
    [local] = wait_for(
        "the upload to be acknowledged",
        lambda: [e for e in agent.events("violation") if e.uploaded_at is not None],
        context=agent.log_text,
    )
    assert local.payload["exe"] == row["exe"] and local.event_id == row["event_id"]
    report = agent.status().get("report") or {}
    assert report.get("rejected_events", 0) == 0, report
    admin = server.admin_cli("violations", "--format", "ndjson").stdout
    [listed] = [json.loads(line) for line in admin.splitlines()]
    assert listed["exe"] == row["exe"] and listed["host_id"] == row["host_id"]
