"""Settings: flags > env > config file > defaults, validated once with errors naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from endpoint_agent import settings as settings_module
from endpoint_agent.errors import SettingsError
from endpoint_agent.settings import AgentSettings, default_dirs, load_settings

NO_ENV: dict[str, str] = {}
_REAL_DEFAULT_CONFIG_FILE = settings_module._default_config_file


@pytest.fixture(autouse=True)
def no_machine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own /etc/endpoint-agent/config.* must not leak into these tests."""
    monkeypatch.setattr("endpoint_agent.settings._default_config_file", lambda: None)


def test_defaults() -> None:
    s = load_settings({}, environ=NO_ENV)
    assert (s.scan_interval, s.sync_interval, s.upload_interval) == (None, 60.0, 60.0)
    # scan_interval auto is 30 s with process exec events, 5 s without; explicit wins
    assert (s.effective_scan_interval(events=True), s.effective_scan_interval(events=False)) == (30.0, 5.0)
    explicit = load_settings({"scan_interval": 2.0}, environ=NO_ENV)
    assert explicit.effective_scan_interval(events=True) == 2.0
    assert explicit.effective_scan_interval(events=False) == 2.0
    auto = load_settings({}, environ={"ENDPOINT_AGENT_SCAN_INTERVAL": "auto"})
    assert auto.scan_interval is None
    assert (s.circuit_max_kills, s.circuit_window_seconds) == (5, 600.0)
    assert s.log_format == "text" and s.policy is None and s.config is None
    assert s.state_dir == default_dirs().state_dir
    assert s.store_path == s.state_dir / "violations.sqlite3"
    if os.geteuid() == 0:
        assert s.state_dir == Path("/var/lib/endpoint-agent")
        assert s.break_glass_file == Path("/etc/endpoint-agent/break-glass")


def test_precedence_flags_env_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("scan_interval: 7\nsync-interval: 30\nupload_interval: 90\nfleet_id: from-file\n")
    env = {
        "ENDPOINT_AGENT_CONFIG": str(config),
        "ENDPOINT_AGENT_SYNC_INTERVAL": "20",
        "ENDPOINT_AGENT_SCAN_INTERVAL": "6",
        "ENDPOINT_AGENT_UNRELATED_TOOL_SETTING": "ignored",
    }
    s = load_settings({"scan_interval": 1.0, "fleet_id": None}, environ=env)
    assert s.scan_interval == 1.0  # flag
    assert s.sync_interval == 20.0  # env over file
    assert s.upload_interval == 90.0  # file over default
    assert s.fleet_id == "from-file"  # a flag that was not given (None) does not count
    assert s.config == config


def test_toml_config_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "agent.toml"
    config.parent.mkdir()
    config.write_text(
        'policy = "policy.yaml"\nstate_dir = "/var/tmp/ea"\nprotected_extra = ["corpvpnd", "/opt/vpn/*"]\n'
        'public_key = ["keys/a.pub"]\nlog_format = "json"\n'
    )
    s = load_settings({"config": str(config)}, environ=NO_ENV)
    assert s.policy == tmp_path / "etc" / "policy.yaml"
    assert s.state_dir == Path("/var/tmp/ea")
    assert s.protected_extra == ("corpvpnd", "/opt/vpn/*")
    assert s.public_keys == (tmp_path / "etc" / "keys" / "a.pub",)
    assert s.log_format == "json"


def test_lists_from_env_and_flags() -> None:
    env = {
        "ENDPOINT_AGENT_PROTECTED_EXTRA": "corpvpnd, teamviewerd",
        "ENDPOINT_AGENT_PUBLIC_KEY": '["/k/a,b.pub"]',
    }
    s = load_settings({"config": None}, environ=env)
    assert s.protected_extra == ("corpvpnd", "teamviewerd")
    assert s.public_keys == (Path("/k/a,b.pub"),)
    assert load_settings({"public_keys": ["/k/1.pub", "/k/2.pub"]}, environ=NO_ENV).public_keys == (
        Path("/k/1.pub"), Path("/k/2.pub"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        ({}, {"ENDPOINT_AGENT_SCAN_INTERVAL": "0"}, "scan_interval (env ENDPOINT_AGENT_SCAN_INTERVAL)"),
        ({}, {"ENDPOINT_AGENT_SCAN_INTERVAL": "soon"}, "scan_interval (env ENDPOINT_AGENT_SCAN_INTERVAL)"),
        ({"server": "ftp://example.com"}, {}, "invalid setting server (flag --server): must be an http"),
        ({"log_format": "xml"}, {}, "invalid setting log_format (flag --log-format)"),
        ({}, {"ENDPOINT_AGENT_CIRCUIT_MAX_KILLS": "0"}, "circuit_max_kills"),
        (
            {},
            {"ENDPOINT_AGENT_PROTECTED_EXTRA": "[1, "},
            "protected_extra (env ENDPOINT_AGENT_PROTECTED_EXTRA)",
        ),
        ({"nonsense": 1}, {}, "unknown setting 'nonsense'"),
    ],
)
def test_invalid_values_name_the_key_and_where_it_came_from(
    overrides: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"config": None, **overrides}, environ=env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("scan_interval: 5\nscan_intervall: 3\n")
    with pytest.raises(SettingsError, match=f"config file {config}: unknown key 'scan_intervall'"):
        load_settings({"config": str(config)}, environ=NO_ENV)
    config.write_text("kill_grace_seconds: -1\n")
    with pytest.raises(
        SettingsError, match=f"kill_grace_seconds \\(config file {config}, key kill_grace_seconds\\)"
    ):
        load_settings({"config": str(config)}, environ=NO_ENV)
    config.write_text("scan_interval: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings({"config": str(config)}, environ=NO_ENV)
    config.write_text("- a list\n")
    with pytest.raises(SettingsError, match="expected a mapping"):
        load_settings({"config": str(config)}, environ=NO_ENV)
    with pytest.raises(SettingsError, match="not found"):
        load_settings({"config": str(tmp_path / "missing.yaml")}, environ=NO_ENV)


def test_settings_are_frozen() -> None:
    s = AgentSettings()
    with pytest.raises(ValueError, match="frozen"):
        s.scan_interval = 1  # type: ignore[misc]


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "packaging" / "config.example.yaml"
    s = load_settings({"config": str(example)}, environ=NO_ENV)
    assert s.policy == Path("/etc/endpoint-agent/policy.yaml")
    assert s.protected_extra == ("/opt/corp-vpn/*", "corp-remote-support")


def test_the_default_config_file_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = settings_module.DefaultDirs(tmp_path / "state", tmp_path)
    monkeypatch.setattr(settings_module, "default_dirs", lambda: dirs)
    monkeypatch.setattr(settings_module, "_default_config_file", _REAL_DEFAULT_CONFIG_FILE)
    (tmp_path / "config.toml").write_text("scan_interval = 2.5\n")
    s = load_settings({}, environ=NO_ENV)
    assert s.scan_interval == 2.5 and s.config == tmp_path / "config.toml"
