"""`make demo` end to end (python -m demo), inside a private PID namespace like every test that may kill."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.e2e_harness import REPO
from tests.support.enforce_procs import PidNamespace, pid_namespaces_available
from tests.support.service_rig import clean_env

_why_not = pid_namespaces_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


def test_the_demo_tells_the_whole_story_and_cleans_up(tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    with PidNamespace() as ns, log.open("wb") as out:
        demo = ns.spawn(
            [sys.executable, "-m", "demo"],
            env=clean_env(PYTHONPATH=str(REPO)),  # nsenter does not keep the working directory
            stdout=out.fileno(),
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
        code = demo.wait(120)
        text = log.read_text(errors="replace")
        leftovers = ns_children(ns)
    assert code == 0, text
    steps = re.findall(r"^==> (.*)$", text, re.MULTILINE)
    assert len(steps) >= 7 and steps[-1] == "Clean-up", steps
    assert "the agent stopped the stand-in" in text and "(signal SIGTERM)" in text
    table = text.split("endpoint-admin violations", 1)[1]
    assert re.search(r"demo-standin\s+killed\s+\d+\s+qbt-demo-[0-9a-f]{6}", table), table
    assert "agent: running" in text and "mode: enforce" in text
    assert "stopped endpoint-agent" in text and "stopped endpoint-server" in text
    # The console's address and a sign-in the demo created; without a terminal it did not wait for Enter.
    assert re.search(r"console: http://127\.0\.0\.1:\d+/", text), text
    assert re.search(r"sign in: user demo, password \S{12,}", text), text
    assert "Press Enter" not in text
    [removed] = re.findall(r"removed (\S+)", text)
    assert not Path(removed).exists()
    assert leftovers == []


def ns_children(ns: PidNamespace) -> list[int]:
    """PIDs left in the namespace besides its init once the demo exited."""
    return [p.pid for p in psutil.Process(ns.init_pid).children(recursive=True)]
