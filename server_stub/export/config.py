"""The `export:` section of the server's config file (`endpoint-server serve --config FILE`).

    export:
      poll_interval: 1.0          # seconds between looks for new violations when a sink is idle
      sinks:
        - {name: soc, type: syslog, host: 10.0.0.5, port: 6514, transport: tls, ca_file: /etc/ca.pem}
        - {name: ocsf, type: file, path: /var/log/endpoint-server/ocsf.jsonl, max_bytes: 104857600}
        - {name: chat, type: webhook, url: https://hooks.example/x, format: slack,
           secret_file: /etc/endpoint-server/chat.secret, filter: {min_severity: high}}

Validated once at start; an error names the sink and the key. Secrets come from a file (never
the config itself on a command line), which must not be readable by other users.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from endpoint_agent.errors import SettingsError
from endpoint_contract.vocabulary import Outcome, Severity

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Sink(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    batch_size: int = Field(default=500, ge=1, le=10_000)
    max_backoff: float = Field(default=300.0, gt=0, le=3600)


class EventFilter(BaseModel):
    """Which violations a sink gets (all, unless narrowed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    categories: tuple[str, ...] = ()
    actions: tuple[Outcome, ...] = ()
    min_severity: Severity = Severity.LOW

    def accepts(self, event: dict[str, object]) -> bool:
        if self.categories and event.get("category") not in self.categories:
            return False
        if self.actions and event.get("action") not in self.actions:
            return False
        try:
            severity = Severity(str(event.get("severity") or Severity.MEDIUM))
        except ValueError:
            severity = Severity.MEDIUM
        return severity.rank >= self.min_severity.rank


class SyslogSink(_Sink):
    """RFC 5424 syslog carrying CEF: UDP (one datagram each), TCP or TLS (octet-counted, RFC 6587/5425)."""

    type: Literal["syslog"]
    host: str
    port: int = Field(ge=1, le=65535)
    transport: Literal["udp", "tcp", "tls"] = "tcp"
    ca_file: Path | None = None  # TLS: trust this CA instead of the system's
    facility: int = Field(default=13, ge=0, le=23)  # 13: log audit
    timeout: float = Field(default=10.0, gt=0, le=120)


class FileSink(_Sink):
    """OCSF JSON lines, rotated by size (file, file.1 ... file.N), mode 0600."""

    type: Literal["file"]
    path: Path
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=4096)
    backups: int = Field(default=5, ge=0, le=100)


class WebhookSink(_Sink):
    """POST per violation: JSON (the contract object) or Slack-compatible text, HMAC-signed."""

    type: Literal["webhook"]
    url: str
    format: Literal["json", "slack"] = "json"
    secret_file: Path | None = None  # HMAC-SHA256 key; required for "json"
    filter: EventFilter = EventFilter()
    timeout: float = Field(default=10.0, gt=0, le=120)
    secret: str = Field(default="", exclude=True, repr=False)  # read from secret_file at load

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _secret(self) -> WebhookSink:
        if self.format == "json" and self.secret_file is None:
            raise ValueError("secret_file is required for format json (receivers verify the signature)")
        return self


Sink = Annotated[SyslogSink | FileSink | WebhookSink, Field(discriminator="type")]


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    poll_interval: float = Field(default=1.0, gt=0, le=60)
    # Only violations received at least this long ago are exported: a transaction still committing
    # a lower id must not be overtaken (ids are handed out before commit on PostgreSQL).
    settle_seconds: float = Field(default=2.0, ge=0, le=60)
    sinks: tuple[Sink, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> ExportConfig:
        names = [s.name for s in self.sinks]
        if len(names) != len(set(names)):
            raise ValueError("sink names must be unique (each keeps its own cursor)")
        return self


def _read_secret(path: Path) -> str:
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise SettingsError(f"{path}: a secret file must not be readable by others (chmod 600)")
        text = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror or exc}") from exc
    if len(text) < 16:
        raise SettingsError(f"{path}: a webhook secret needs at least 16 characters")
    return text


def load_export_config(path: Path) -> ExportConfig:
    """The `export:` section of the config file at `path` (an empty one when it has none)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SettingsError(f"--config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"--config {path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"--config {path}: must be a mapping")
    unknown = set(raw) - {"export"}
    if unknown:
        raise SettingsError(f"--config {path}: unknown section(s): {', '.join(sorted(map(str, unknown)))}")
    try:
        config = ExportConfig.model_validate(raw.get("export") or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SettingsError(f"--config {path}: export.{loc}: {err['msg']}") from exc
    sinks = []
    for sink in config.sinks:
        if isinstance(sink, WebhookSink) and sink.secret_file is not None:
            sink = sink.model_copy(update={"secret": _read_secret(sink.secret_file)})
        sinks.append(sink)
    return config.model_copy(update={"sinks": tuple(sinks)})


__all__ = [
    "EventFilter",
    "ExportConfig",
    "FileSink",
    "Sink",
    "SyslogSink",
    "WebhookSink",
    "load_export_config",
]
