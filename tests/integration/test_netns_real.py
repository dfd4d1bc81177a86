"""A listener inside its own network namespace is seen from the host, with its PID (root only)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys

import pytest

from endpoint_agent.collect.netns import collect_all_namespaces, netns_of
from endpoint_agent.types import Endpoint
from tests.support import ProcessReaper

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="creating a network namespace needs root"),
]

# Inside the new namespace: lo up, listen on 127.0.0.1 (the namespace's own loopback), report.
LISTENER = """
import json, socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(json.dumps({"pid": __import__("os").getpid(), "port": s.getsockname()[1]}), flush=True)
sys.stdin.read()
"""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing on CI (see .ci/system-packages.sh)")
        pytest.skip(f"{tool} is not installed")
    return path


def read_line(popen: subprocess.Popen[bytes], timeout: float = 20.0) -> bytes:
    assert popen.stdout is not None
    ready, _, _ = select.select([popen.stdout], [], [], timeout)
    assert ready, "the namespaced listener did not report in time"
    line = popen.stdout.readline()
    assert line, f"the namespaced listener exited: {popen.stderr.read() if popen.stderr else b''!r}"
    return line


def test_listener_in_another_network_namespace_is_seen_with_its_pid(reaper: ProcessReaper) -> None:
    unshare, ip = need("unshare"), need("ip")
    # unshare (no --fork) and sh both exec: the listener keeps the PID Popen reports.
    script = f'{ip} link set lo up && exec "$0" -c "$1"'
    popen = reaper.track(
        subprocess.Popen(
            [unshare, "--net", "--", "sh", "-c", script, sys.executable, LISTENER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    )
    info = json.loads(read_line(popen))
    assert info["pid"] == popen.pid
    listen = Endpoint("127.0.0.1", info["port"])

    result = collect_all_namespaces()
    host = netns_of("self")
    [theirs] = [ns for ns in result if popen.pid in ns.pids]
    assert not theirs.is_host and theirs.netns_id != host and theirs.netns_id == netns_of(popen.pid)
    assert [s.pid for s in theirs.records if s.record.laddr == listen and s.record.status == "LISTEN"] == [
        popen.pid
    ]
    # The host's table does not have it (unless a host process happens to use the same port).
    [host_ns] = [ns for ns in result if ns.is_host]
    assert popen.pid not in {s.pid for s in host_ns.records}

    reaper.reap_one(popen.pid)  # killed and waited: nobody lives in that namespace any more
    assert theirs.netns_id not in {ns.netns_id for ns in collect_all_namespaces()}
