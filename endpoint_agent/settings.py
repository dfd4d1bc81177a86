"""Agent settings: command-line flags > env `ENDPOINT_AGENT_<NAME>` > config file > defaults.

Validated once, here, when the agent starts; everything below reads a frozen `AgentSettings`.
An invalid value is a `SettingsError` naming the key and where it came from, e.g.
`invalid setting scan_interval (env ENDPOINT_AGENT_SCAN_INTERVAL): Input should be greater than 0`.

Defaults: a system-wide agent (root, or Windows) keeps its state in the platform's site state
directory (/var/lib/endpoint-agent on Linux) and reads /etc/endpoint-agent/config.{yaml,toml}
(platformdirs' site config dir elsewhere); a non-root agent uses the per-user platformdirs
directories. The config file is YAML or TOML (by extension), a flat mapping of the same keys.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from endpoint_agent.errors import SettingsError

APP_NAME = "endpoint-agent"
ENV_PREFIX = "ENDPOINT_AGENT_"
_CONFIG_NAMES = ("config.yaml", "config.yml", "config.toml")
_MAX_CONFIG_BYTES = 1 << 20

# Other spellings of a key (the flag is repeatable `--public-key`, argparse stores it as `public_keys`).
_ALIASES = {"public_key": "public_keys"}

# Keys whose value is a secret: a config file holding one must not be readable by others.
_SECRET_KEYS = frozenset({"enroll_secret"})
_MAX_SECRET_FILE_BYTES = 4096

# full-scan intervals when `scan_interval` is auto (exec events make the scan a safety net).
SCAN_INTERVAL_WITH_EVENTS = 30.0
SCAN_INTERVAL_POLLING = 5.0


@dataclass(frozen=True)
class DefaultDirs:
    state_dir: Path
    config_dir: Path


def _system_wide() -> bool:
    return sys.platform == "win32" or os.geteuid() == 0


def default_dirs() -> DefaultDirs:
    dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
    if not _system_wide():
        return DefaultDirs(Path(dirs.user_state_dir), Path(dirs.user_config_dir))
    # platformdirs' Linux site config dir is the XDG desktop one (/etc/xdg/...); a daemon lives in /etc.
    config = Path("/etc") / APP_NAME if sys.platform.startswith("linux") else Path(dirs.site_config_dir)
    return DefaultDirs(Path(dirs.site_state_dir), config)


class AgentSettings(BaseModel):
    """Every option of `endpoint-agent run` (and `status`/`violations`, which read the same state)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path | None = None
    server: str | None = None
    enroll_secret: SecretStr | None = None
    # The secret read from a file (kept off command lines and out of shared config files).
    enroll_secret_file: Path | None = None
    # PEM bundle of the CA(s) that sign the server's certificate (an internal CA); default: system CAs.
    ca_bundle: Path | None = None
    # Allow plain http:// to a server that is not on this machine (node key and events in clear).
    insecure_http: bool = False
    public_keys: tuple[Path, ...] = ()
    fleet_id: str | None = None
    state_dir: Path = Field(default_factory=lambda: default_dirs().state_dir)
    # -- event-driven reaction: None ("auto") is 30 s while process exec events drive the
    # reaction, 5 s without them; an explicit value always wins (see `effective_scan_interval`) --
    scan_interval: float | None = Field(None, gt=0, le=86400)
    sync_interval: float = Field(60.0, gt=0, le=86400)
    upload_interval: float = Field(60.0, gt=0, le=86400)
    policy: Path | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # -- event-driven reaction --
    # Listen for process starts (Linux kernel process connector, root) and judge each new program
    # at once; off: periodic scans only.
    process_events: bool = True
    # -- exec gate: judge programs before they run (fanotify, Linux, root); auto: where possible --
    exec_gate: Literal["auto", "on", "off"] = "auto"
    # Whose mounts the gate marks: `own` (the agent's mount namespace) or `init` (the machine's, for a
    # service that systemd runs in a mount namespace of its own: PrivateTmp=, ProtectSystem=, ...).
    exec_gate_mounts: Literal["own", "init"] = "own"
    # While process events keep the process set current, scans re-read each process only once per
    # this many seconds (a slice of them per scan, never all at once); what that finds wrong is
    # counted as a repair in `status`. A safety net: its cost grows with the number of processes
    # (one /proc/<pid>/stat read each per interval, and one listing of /proc), so it is rare.
    rewalk_interval: float = Field(
        1800.0,
        gt=0,
        le=86400,
        description="seconds in which every process is read again while events track them",
    )
    # Tests and benchmarks only: nothing but descendants of this process may be signalled
    # (enforce/scope.py); everything else is treated as protected. Only ever narrows enforcement.
    enforce_scope_pid: int | None = Field(None, ge=1)

    # Safety rails.
    break_glass_file: Path = Field(default_factory=lambda: default_dirs().config_dir / "break-glass")
    protected_extra: tuple[str, ...] = ()
    kill_grace_seconds: float = Field(3.0, ge=0, le=60)
    kill_tree: bool = False
    block_action: Literal["terminate", "suspend"] = "terminate"
    circuit_max_kills: int = Field(5, ge=1, le=10_000)  # distinct targets per window (enforce/circuit.py)
    circuit_window_seconds: float = Field(600.0, gt=0, le=7 * 86400)
    # Policy sync: a new policy that would stop more than this share of the running
    # processes (or any protected one) is activated in monitor mode only.
    unsafe_kill_share: float = Field(0.10, gt=0, le=1)

    # User notification.
    notify: bool = True
    notify_timeout_seconds: float = Field(5.0, gt=0, le=120)
    notify_interval_seconds: float = Field(60.0, ge=0, le=86400)

    # -- DNS filter and connection blocking (endpoint_agent/dns, enforce/netfilter.py) --
    # auto: on while the active policy has domain conditions (Linux, root); on: always; off: never.
    dns_filter: Literal["auto", "on", "off"] = "auto"
    dns_listen: str = Field(
        "127.0.0.153:53", description="loopback address:port of the DNS filter (resolv.conf needs port 53)"
    )
    dns_upstreams: tuple[str, ...] = Field(
        (), description="DNS servers the filter forwards to (default: those the machine used before)"
    )
    dns_sinkhole: str | None = Field(
        None, description="answer blocked A/AAAA queries with this address (a block page) instead of NXDOMAIN"
    )
    dns_report_interval: float = Field(
        3600.0, gt=0, le=7 * 86400, description="seconds between records of one (process, domain)"
    )

    # Local event log: every recorded violation as an OCSF JSON line (report/event_log.py).
    event_log: Path | None = Field(None, description="append violations to this file as OCSF JSON lines")
    event_log_max_bytes: int = Field(
        50 * 1024 * 1024, ge=4096, description="rotate the event log at this size"
    )
    event_log_backups: int = Field(5, ge=0, le=100, description="rotated event logs kept (FILE.1 ... FILE.N)")

    # Local violation store (outbox).
    store_max_events: int = Field(100_000, ge=100)
    store_max_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    store_min_free_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # Events held in memory while the store cannot be written (full disk); older ones dropped, counted.
    store_max_unsaved_events: int = Field(1000, ge=1, le=100_000)

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="before")
    @classmethod
    def _secret_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("enroll_secret_file") in (None, ""):
            return data
        if data.get("enroll_secret") not in (None, ""):
            raise Conflict(("enroll_secret", "enroll_secret_file"), "give the secret one way only")
        try:
            secret = read_secret_file(Path(str(data["enroll_secret_file"])))
        except ValueError as exc:
            raise Conflict(("enroll_secret_file",), str(exc)) from exc
        return {**data, "enroll_secret": secret}

    @model_validator(mode="after")
    def _consistent(self) -> AgentSettings:
        if self.policy is not None and self.server is not None:
            raise Conflict(
                ("policy", "server"),
                "standalone mode (a local policy file) and server mode exclude each other; remove one",
            )
        if self.server is not None and not self.insecure_http and not _secure_url(self.server):
            raise Conflict(
                ("server",),
                "plain http:// to a server off this machine sends the node key and events in clear; "
                "use https:// (--ca-bundle FILE for an internal CA), or pass --insecure-http",
            )
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise Conflict(("ca_bundle",), f"{self.ca_bundle}: not found or not a regular file")
        return self

    # -- event-driven reaction --
    @field_validator("scan_interval", mode="before")
    @classmethod
    def _auto(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    def effective_scan_interval(self, events: bool) -> float:
        """Seconds between full scans: the explicit setting, else 30 with process events, 5 without."""
        if self.scan_interval is not None:
            return self.scan_interval
        return SCAN_INTERVAL_WITH_EVENTS if events else SCAN_INTERVAL_POLLING

    @field_validator("exec_gate", "dns_filter", mode="before")
    @classmethod
    def _gate_word(cls, value: object) -> object:
        # YAML 1.1 reads bare on/off as booleans
        if isinstance(value, bool):
            return "on" if value else "off"
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("dns_listen")
    @classmethod
    def _dns_listen(cls, value: str) -> str:
        from endpoint_agent.endpoints import parse_server

        endpoint = parse_server(value)
        if not endpoint.ip.startswith("127.") and endpoint.ip != "::1":
            raise ValueError("must be a loopback address (the filter serves this machine only)")
        return value

    @field_validator("dns_upstreams")
    @classmethod
    def _dns_upstreams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from endpoint_agent.endpoints import parse_server

        for item in value:
            parse_server(item)
        return value

    @field_validator("dns_sinkhole")
    @classmethod
    def _dns_sinkhole(cls, value: str | None) -> str | None:
        import ipaddress

        if value is not None:
            try:
                ipaddress.ip_address(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
            return value.strip()
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("public_keys", "protected_extra", "dns_upstreams", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("protected_extra")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not item.strip() for item in value):
            raise ValueError("entries must not be empty")
        return tuple(item.strip() for item in value)

    @field_validator("state_dir", "policy", "break_glass_file", "config", "enroll_secret_file", "ca_bundle")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @field_validator("public_keys")
    @classmethod
    def _absolute_all(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(p.expanduser().absolute() for p in value)

    # Derived locations, all under the state dir.
    @property
    def store_path(self) -> Path:
        return self.state_dir / "violations.sqlite3"

    @property
    def status_path(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "agent.lock"


_FIELDS = frozenset(AgentSettings.model_fields)
_LIST_FIELDS = frozenset({"public_keys", "protected_extra", "dns_upstreams"})
_PATH_FIELDS = frozenset(
    {"state_dir", "policy", "break_glass_file", "public_keys", "enroll_secret_file", "ca_bundle"}
)


class Conflict(ValueError):
    """Settings that are each valid but not together; `keys` are named with where each came from."""

    def __init__(self, keys: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.keys = keys


def _secure_url(url: str) -> bool:
    """https://, or http:// to this machine (loopback: nothing crosses a network)."""
    if url.startswith("https://"):
        return True
    host = url.removeprefix("http://").split("/", 1)[0].rsplit("@", 1)[-1]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.split(":", 1)[0]
    return is_loopback_host(host)


def is_loopback_host(host: str) -> bool:
    """`localhost` or an address of 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path) -> str:
    """The secret in `path` (one line; surrounding whitespace and the final newline dropped)."""
    try:
        with path.expanduser().open("rb") as fh:
            data = fh.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > _MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{path}: larger than {_MAX_SECRET_FILE_BYTES} bytes; expected one line")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text") from exc
    if not secret or "\n" in secret:
        raise ValueError(f"{path}: expected the secret on one line")
    return secret


def _canonical(key: str) -> str:
    key = key.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def _parse_env_list(raw: str) -> list[str]:
    """A JSON array (`["a", "b,c"]`) or a comma-separated list."""
    if raw.lstrip().startswith("["):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list: {exc.msg}") from exc
        if not isinstance(value, list):
            raise ValueError("not a JSON list")
        return [str(v) for v in value]
    return [part.strip() for part in raw.split(",") if part.strip()]


def _from_env(environ: Mapping[str, str]) -> dict[str, tuple[object, str]]:
    out: dict[str, tuple[object, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or raw == "":
            continue
        key = _canonical(name[len(ENV_PREFIX) :])
        if key not in _FIELDS:
            continue  # other tools' variables share the prefix; not ours to reject
        source = f"env {name}"
        if key in _LIST_FIELDS:
            try:
                out[key] = (_parse_env_list(raw), source)
            except ValueError as exc:
                raise SettingsError(f"invalid setting {key} ({source}): {exc}") from exc
        else:
            out[key] = (raw, source)
    return out


def _read_config_file(path: Path) -> dict[str, tuple[object, str]]:
    source = f"config file {path}"
    try:
        if not path.is_file():
            raise SettingsError(f"config file {path}: not found or not a regular file")
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > _MAX_CONFIG_BYTES:
        raise SettingsError(f"config file {path}: larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        if path.suffix.lower() == ".toml":
            parsed: Any = tomllib.loads(data.decode("utf-8"))
        else:
            parsed = yaml.safe_load(data)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "TOML" if path.suffix.lower() == ".toml" else "YAML"
        raise SettingsError(f"config file {path}: not valid {kind}: {first_line}") from exc
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings at the top level")
    out: dict[str, tuple[object, str]] = {}
    for raw_key, value in parsed.items():
        key = _canonical(str(raw_key))
        if key == "config":
            raise SettingsError(f"config file {path}: key 'config' is not allowed in a config file")
        if key not in _FIELDS:
            raise SettingsError(f"config file {path}: unknown key {raw_key!r}")
        if key in _SECRET_KEYS and mode & 0o077 and sys.platform != "win32":
            raise SettingsError(
                f"config file {path}: holds {raw_key} but its mode is {mode:04o}; "
                f"make it readable by its owner only (chmod 600 {path})"
            )
        out[key] = (_relative_to(path.parent, key, value), f"{source}, key {raw_key}")
    return out


def _relative_to(base: Path, key: str, value: object) -> object:
    """Relative paths in a config file are relative to that file, not to the working directory."""
    if key not in _PATH_FIELDS:
        return value
    if isinstance(value, str):
        return str(base / Path(value).expanduser())
    if isinstance(value, list):
        return [str(base / Path(v).expanduser()) if isinstance(v, str) else v for v in value]
    return value


def _default_config_file() -> Path | None:
    config_dir = default_dirs().config_dir
    for name in _CONFIG_NAMES:
        candidate = config_dir / name
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    overrides: Mapping[str, object] | None = None, *, environ: Mapping[str, str] | None = None
) -> AgentSettings:
    """Merge flags (`overrides`, keys are setting names; None means not given), env, config file, defaults."""
    environ = os.environ if environ is None else environ
    flags: dict[str, tuple[object, str]] = {}
    for raw_key, value in (overrides or {}).items():
        if value is None:
            continue
        key = _canonical(raw_key)
        if key not in _FIELDS:
            raise SettingsError(f"unknown setting {raw_key!r}")
        flags[key] = (value, f"flag --{key.replace('_', '-')}")
    env = _from_env(environ)

    config_entry = flags.get("config") or env.get("config")
    if config_entry is not None:
        config_path: Path | None = Path(str(config_entry[0])).expanduser()
    else:
        config_path = _default_config_file()
        config_entry = (config_path, "default config file")
    from_file = _read_config_file(config_path) if config_path is not None else {}

    merged: dict[str, tuple[object, str]] = {**from_file, **env, **flags}
    if config_path is not None:
        merged["config"] = (config_path, config_entry[1])
    try:
        return AgentSettings.model_validate({key: value for key, (value, _source) in merged.items()})
    except ValidationError as exc:
        raise SettingsError(_describe(exc, merged)) from None


def _describe(exc: ValidationError, merged: Mapping[str, tuple[object, str]]) -> str:
    parts = []
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, Conflict):
            named = ", ".join(f"{key} ({merged[key][1]})" if key in merged else key for key in cause.keys)
            label = "conflicting settings" if len(cause.keys) > 1 else "invalid setting"
            parts.append(f"{label} {named}: {cause}")
            continue
        loc = error.get("loc") or ()
        key = str(loc[0]) if loc else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if key in merged:
            parts.append(f"invalid setting {key} ({merged[key][1]}): {message}")
        elif key:
            parts.append(f"invalid setting {key}: {message}")
        else:
            parts.append(f"invalid settings: {message}")
    return "; ".join(parts)


__all__ = ["ENV_PREFIX", "AgentSettings", "DefaultDirs", "default_dirs", "load_settings"]
