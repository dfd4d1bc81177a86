"""The wheel carries its data; `endpoint-agent install` puts the service in place from it and
`uninstall` undoes it (into a staging root: this machine's /etc is never touched)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from endpoint_agent.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
DATA = {
    "default-policy.yaml": ROOT / "policies" / "default.yaml",
    "config.example.yaml": ROOT / "packaging" / "config.example.yaml",
    "endpoint-agent.service": ROOT / "packaging" / "systemd" / "endpoint-agent.service",
    "endpoint-server.service": ROOT / "packaging" / "systemd" / "endpoint-server.service",
    "com.example.endpoint-agent.plist": ROOT / "packaging" / "launchd" / "com.example.endpoint-agent.plist",
}


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "endpoint_agent", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_the_wheel_carries_the_policy_config_and_service_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(ROOT), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("endpoint_agent-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name, source in DATA.items():
            assert zf.read(f"endpoint_agent/data/{name}") == source.read_bytes(), name
        assert "server_stub/API.md" in zf.namelist()


def test_install_then_uninstall_into_a_staging_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = agent("install", "--root", str(root))
    assert done.returncode == 0, done.stderr
    unit = (root / "etc/systemd/system/endpoint-agent.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    # the unit starts this installation, whichever venv it lives in
    command = exec_start.removeprefix("ExecStart=").split()
    assert Path(command[0]).parent == Path(sys.executable).parent
    assert command[-3:] == ["run", "--config", "/etc/endpoint-agent/config.yaml"]
    config = root / "etc/endpoint-agent/config.yaml"
    policy = root / "etc/endpoint-agent/policy.yaml"
    assert policy.read_bytes() == DATA["default-policy.yaml"].read_bytes()
    assert (root / "var/lib/endpoint-agent").is_dir()
    # the installed config is valid as it stands (paths pointed into the staging root)
    text = yaml.safe_load(config.read_text())
    text.update(policy=str(policy), state_dir=str(root / "var/lib/endpoint-agent"))
    staged = tmp_path / "staged.yaml"
    staged.write_text(yaml.safe_dump(text))
    settings = load_settings({"config": str(staged)}, environ={})
    assert settings.policy == policy and settings.server is None
    assert agent("check-policy", str(policy)).returncode == 0

    # an edited config is kept on a second install and on uninstall; the rest goes
    config.write_text(config.read_text() + "\nlog_level: DEBUG\n")
    edited = hashlib.sha256(config.read_bytes()).hexdigest()
    assert "kept existing" in agent("install", "--root", str(root)).stdout
    assert hashlib.sha256(config.read_bytes()).hexdigest() == edited
    done = agent("uninstall", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert "changed since install" in done.stdout
    assert not (root / "etc/systemd/system/endpoint-agent.service").exists()
    assert not policy.exists() and config.exists()
    assert (root / "var/lib/endpoint-agent").is_dir()  # recorded violations stay without --purge
    assert agent("uninstall", "--root", str(root), "--purge").returncode == 0
    assert not (root / "etc/endpoint-agent").exists() and not (root / "var/lib/endpoint-agent").exists()


def test_uninstall_without_an_install_is_one_line(tmp_path: Path) -> None:
    done = agent("uninstall", "--root", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"endpoint-agent: error: uninstall: nothing installed under {tmp_path} "
        f"(no {tmp_path}/var/lib/endpoint-agent/install-manifest.json)"
    ]
