"""Day one for a sysadmin, through the real command lines: refusals, --version, status exit codes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from endpoint_admin.cli import build_parser as admin_parser
from endpoint_agent.cli import _settings_overrides, build_parser
from endpoint_agent.cli import build_parser as agent_parser
from endpoint_agent.settings import load_settings
from server_stub.cli import build_parser as server_parser

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"


def tool(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENDPOINT_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        cwd=ROOT,
    )


def refused(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr that says what is wrong."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of a tool, from its own parser: (), ("scan",), ("users", "add"), ..."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


TOOLS = {"endpoint_agent": agent_parser, "endpoint_admin": admin_parser, "server_stub": server_parser}
PROGS = {
    "endpoint_agent": "endpoint-agent",
    "endpoint_admin": "endpoint-admin",
    "server_stub": "endpoint-server",
}
COMMANDS = [(module, path) for module, build in TOOLS.items() for path in _commands(build())]


@pytest.mark.parametrize(
    ("module", "command"), COMMANDS, ids=[f"{m}:{' '.join(c) or '-'}" for m, c in COMMANDS]
)
def test_every_command_answers_version(module: str, command: tuple[str, ...]) -> None:
    done = tool(module, *command, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{PROGS[module]} 0.1.0"


def test_policy_and_server_together_are_refused_naming_both_sources(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server: https://policy.example.com\n")
    line = refused(
        tool("endpoint_agent", "run", "--config", str(config), "--policy", str(DEFAULT_POLICY)),
        "conflicting settings",
        "policy (flag --policy)",
        f"server (config file {config}, key server)",
    )
    assert "exclude each other" in line


@pytest.mark.parametrize("url", ["http://10.1.2.3:8080", "http://policy.example.com", "http://[2001:db8::1]"])
def test_plain_http_off_this_machine_is_refused(tmp_path: Path, url: str) -> None:
    refused(
        tool("endpoint_agent", "run", "--state-dir", str(tmp_path), env={"ENDPOINT_AGENT_SERVER": url}),
        "invalid setting server (env ENDPOINT_AGENT_SERVER)",
        "--insecure-http",
    )


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://policy.example.com"],
)
def test_loopback_http_and_https_are_accepted(tmp_path: Path, url: str) -> None:
    assert load_settings({"server": url, "state_dir": str(tmp_path)}, environ={}).server == url


def test_insecure_http_allows_a_remote_http_server(tmp_path: Path) -> None:
    settings = load_settings(
        {"server": "http://10.1.2.3:8080", "insecure_http": True, "state_dir": str(tmp_path)}, environ={}
    )
    assert settings.insecure_http and settings.server == "http://10.1.2.3:8080"


def test_enroll_secret_from_a_file_and_never_two_ways(tmp_path: Path) -> None:
    secret = tmp_path / "enroll.secret"
    secret.write_text("s3cret-0123456789abcdef\n")
    env = {"ENDPOINT_AGENT_ENROLL_SECRET_FILE": str(secret)}
    settings = load_settings({"state_dir": str(tmp_path)}, environ=env)
    assert settings.enroll_secret is not None
    assert settings.enroll_secret.get_secret_value() == "s3cret-0123456789abcdef"
    refused(
        tool(
            "endpoint_agent",
            "run",
            "--state-dir",
            str(tmp_path),
            "--enroll-secret-file",
            str(secret),
            env={"ENDPOINT_AGENT_ENROLL_SECRET": "other-secret-0123456789"},
        ),
        "conflicting settings enroll_secret (env ENDPOINT_AGENT_ENROLL_SECRET)",
        "enroll_secret_file (flag --enroll-secret-file)",
    )
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    refused(
        tool("endpoint_agent", "run", "--state-dir", str(tmp_path), "--enroll-secret-file", str(empty)),
        "invalid setting enroll_secret_file (flag --enroll-secret-file)",
        "one line",
    )
    refused(
        tool("endpoint_agent", "run", "--enroll-secret-file", str(tmp_path / "missing")),
        "enroll_secret_file",
        "cannot read",
    )


def test_a_secret_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    done = tool(
        "endpoint_agent", "run", "--enroll-secret", "s3cret-0123456789abcdef", "--server", "http://10.9.9.9"
    )
    assert done.returncode == 2
    warning, error = done.stderr.strip().splitlines()
    assert warning.startswith("endpoint-agent: warning: --enroll-secret is visible to every local user (ps)")
    assert "s3cret" not in done.stderr and "invalid setting server" in error


def test_a_config_file_holding_a_secret_must_be_private(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\nenroll_secret: s3cret-0123456789abcdef\n")
    config.chmod(0o644)
    refused(
        tool("endpoint_agent", "run", "--config", str(config)),
        f"config file {config}: holds enroll_secret but its mode is 0644",
        "chmod 600",
    )
    config.chmod(0o600)
    settings = load_settings({"config": str(config)}, environ={})
    assert settings.enroll_secret is not None
    # a file without a secret may be world-readable
    config.write_text(f"state_dir: {tmp_path}\n")
    config.chmod(0o644)
    assert load_settings({"config": str(config)}, environ={}).enroll_secret is None


def test_a_missing_ca_bundle_is_refused(tmp_path: Path) -> None:
    refused(
        tool(
            "endpoint_agent",
            "run",
            "--server",
            "https://policy.example.com",
            "--ca-bundle",
            str(tmp_path / "missing.pem"),
        ),
        "invalid setting ca_bundle (flag --ca-bundle)",
        "not found",
    )


def test_every_setting_is_a_flag_of_run(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["run", "--state-dir", str(tmp_path), "--block-action", "suspend", "--break-glass-file", "bg",
         "--kill-tree", "--no-notify", "--protected-extra", "corp-vpn", "--protected-extra", "/opt/x/*",
         "--circuit-max-kills", "7", "--policy", str(DEFAULT_POLICY)]
    )  # fmt: skip
    settings = load_settings(_settings_overrides(args), environ={})
    assert settings.block_action == "suspend" and settings.kill_tree and not settings.notify
    assert settings.break_glass_file == Path("bg").absolute()
    assert settings.protected_extra == ("corp-vpn", "/opt/x/*") and settings.circuit_max_kills == 7
    line = refused(tool("endpoint_agent", "run", "--block-action", "explode"))
    assert line.startswith("endpoint-agent: error: invalid setting block_action (flag --block-action)")


@pytest.mark.parametrize("command", ["status", "violations"])
def test_status_and_violations_help_lists_only_what_they_use(command: str) -> None:
    done = tool("endpoint_agent", command, "--help")
    assert done.returncode == 0
    for used in ("--config", "--state-dir", "--json", "--version"):
        assert used in done.stdout
    for unused in ("--server", "--policy", "--enroll-secret", "--scan-interval", "--block-action"):
        assert unused not in done.stdout
    refused(tool("endpoint_agent", command, "--server", "https://x"), "unrecognized arguments")


def test_status_is_a_health_check(tmp_path: Path) -> None:
    """Exit 3 when no agent runs (never ran, or stopped), 0 while one runs on that state dir."""
    done = tool("endpoint_agent", "status", env={"ENDPOINT_AGENT_STATE_DIR": str(tmp_path)})
    assert done.returncode == 3, done.stderr
    assert "never ran" in done.stdout
    agent = subprocess.Popen(
        [sys.executable, "-m", "endpoint_agent", "run", "--state-dir", str(tmp_path), "--policy",
         str(DEFAULT_POLICY), "--no-process-events", "--scan-interval", "3600", "--no-notify"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        for _ in range(600):
            done = tool("endpoint_agent", "status", "--json", "--state-dir", str(tmp_path))
            if done.returncode == 0 or agent.poll() is not None:
                break
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert '"running": true' in done.stdout
    finally:
        agent.terminate()
        agent.wait(60)
    done = tool("endpoint_agent", "status", "--state-dir", str(tmp_path))
    assert done.returncode == 3 and "stopped" in done.stdout, done.stdout


def test_the_server_without_its_extra_says_so_in_one_line(tmp_path: Path) -> None:
    # The [server] extra not installed: its modules cannot be imported (None in sys.modules is how
    # Python marks a module as unavailable).
    probe = (
        "import sys\n"
        "for name in ('fastapi', 'uvicorn', 'sqlalchemy'): sys.modules[name] = None\n"
        "from server_stub.cli import main\n"
        f"sys.exit(main(['serve', '--data-dir', {str(tmp_path)!r}, '--public-key', 'k.pub']))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    line = refused(done)
    assert line.startswith("endpoint-server needs the [server] extra: pip install 'endpoint-agent[server]'")
    assert "Traceback" not in done.stderr
