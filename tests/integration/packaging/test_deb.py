"""`make deb`: the package is built, then installed, run and removed -- inside a private mount and PID
namespace, on an overlay over `/` whose writes land in a tmpfs, so this machine never changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci_skip import require

ROOT = Path(__file__).resolve().parents[3]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespace, overlay, chroot)"
    for tool in ("dpkg-deb", "dpkg", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/usr/bin/python3").exists():
        return "/usr/bin/python3 (the package's interpreter) is not installed"
    return None


SCRIPT = Path(__file__).with_name("deb_in_overlay.sh")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(_missing())
    out = tmp_path_factory.mktemp("deb")
    env = dict(os.environ, PIP=f"{sys.executable} -m pip")
    done = subprocess.run(
        ["make", "--no-print-directory", "deb", f"DEB_DIR={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("endpoint-agent_*.deb")
    return path


def test_the_package_carries_the_venv_unit_and_conffiles(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for entry in (
        "./opt/endpoint-agent/bin/python",
        "./opt/endpoint-agent/bin/endpoint-agent",
        "./usr/bin/endpoint-agent -> /opt/endpoint-agent/bin/endpoint-agent",
        "./lib/systemd/system/endpoint-agent.service",
        "./etc/endpoint-agent/config.yaml",
        "./etc/endpoint-agent/policy.yaml",
    ):
        assert entry in listing, entry
    assert "/tmp/" not in listing
    conffiles = subprocess.run(
        ["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert conffiles == ["/etc/endpoint-agent/config.yaml", "/etc/endpoint-agent/policy.yaml"]


def test_installed_run_and_purged_in_an_overlay_without_touching_this_machine(
    deb: Path, tmp_path: Path
) -> None:
    before = subprocess.run(["dpkg-query", "-W", "endpoint-agent"], capture_output=True, check=False)
    scratch = tmp_path / "ns"
    scratch.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
         "sh", str(SCRIPT), str(scratch), str(deb)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0 and "== done" in out, out + done.stderr
    assert "== status-installed install ok installed" in out
    assert "== version endpoint-agent 0.1.0 / endpoint-admin 0.1.0" in out
    assert "== unit ExecStart=/usr/bin/endpoint-agent run --config /etc/endpoint-agent/config.yaml" in out
    assert "== running agent: running" in out, out
    assert "== after-remove opt=no conf=yes" in out  # conffiles stay until purge
    assert "== after-purge conf=no state=no bin=no" in out
    # nothing reached the real machine: no package registered, no files
    after = subprocess.run(["dpkg-query", "-W", "endpoint-agent"], capture_output=True, check=False)
    assert after.returncode == before.returncode != 0
    for path in ("/opt/endpoint-agent", "/etc/endpoint-agent", "/lib/systemd/system/endpoint-agent.service"):
        assert not Path(path).exists(), path
