"""The systemd units (agent and server) pass `systemd-analyze verify` as shipped."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci_skip import require

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("unit", "tool"), [("endpoint-agent", "endpoint-agent"), ("endpoint-server", "endpoint-server")]
)
def test_the_unit_verifies(unit: str, tool: str, tmp_path: Path) -> None:
    require(None if shutil.which("systemd-analyze") else "systemd-analyze (package systemd) is not installed")
    text = (ROOT / "packaging" / "systemd" / f"{unit}.service").read_text()
    # the unit names /usr/bin/TOOL (the Debian package's link); here, this checkout's own entry point
    assert f"ExecStart=/usr/bin/{tool} " in text
    copy = tmp_path / f"{unit}.service"
    copy.write_text(text.replace(f"/usr/bin/{tool} ", f"{BIN / tool} "))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120
    )
    problems = [line for line in done.stderr.splitlines() if unit in line]
    assert done.returncode == 0 and not problems, done.stderr
