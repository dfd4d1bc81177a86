"""Pointing the machine's resolver at the DNS filter, and putting it back.

Two ways, the way the platform expects:

* `ResolvConf` -- /etc/resolv.conf is managed by hand (or by a tool that leaves it alone):
  its content (or, for a symlink, the link target) is saved under the state dir, then the
  file is replaced by one naming the filter. Replaced atomically by rename where possible,
  rewritten in place where the file is a mount point (containers, bind mounts).
* `ResolvedDropIn` -- systemd-resolved owns the stub resolver: a drop-in
  (/etc/systemd/resolved.conf.d/endpoint-agent.conf: `DNS=<filter>`, `Domains=~.`) makes it
  forward everything to the filter; resolved is reloaded to pick it up or let it go.

The saved state is what makes this safe: `restore()` runs on stop, from the uninstall hook
(`python -m endpoint_agent.dns.restore`), and at the next start after a kill -9 (the backup is
still there). A configuration someone else changed since the agent wrote it is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from endpoint_agent.errors import AgentError
from endpoint_agent.types import Endpoint

logger = logging.getLogger(__name__)

MARKER = "# managed by endpoint-agent (DNS filter); the original is restored when the agent stops"
RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_DROPIN_DIR = Path("/etc/systemd/resolved.conf.d")
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")  # resolved's own upstream list
DROPIN_NAME = "endpoint-agent.conf"
BACKUP_NAME = "resolver-backup.json"
_MAX_BYTES = 1 << 20


class ResolverConfigError(AgentError):
    """The resolver configuration could not be changed or restored."""


class ResolverConfig(Protocol):
    """One side effect: where the machine's resolver points (a double lives in the tests)."""

    def original_upstreams(self) -> list[Endpoint]:
        """The DNS servers the machine used before the filter (its upstreams)."""
        ...

    def apply(self, listen: Endpoint) -> None: ...

    def restore(self) -> bool:
        """Put the original back if the agent's change is in place; True if something was restored."""
        ...

    @property
    def applied(self) -> bool: ...


def nameservers(text: str, *, port: int = 53) -> list[Endpoint]:
    out: list[Endpoint] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            ip = parts[1].split("%", 1)[0]  # drop an IPv6 zone
            out.append(Endpoint(ip, port))
    return out


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return fh.read(_MAX_BYTES)


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` by rename; a mount point (a bind-mounted file) is rewritten in place instead."""
    if _is_mount_point(path):
        # Overwrite, then cut: a reader never finds the file empty (no O_TRUNC first).
        data = text.encode("utf-8", errors="surrogateescape")
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _is_mount_point(path: Path) -> bool:
    """Whether `path` itself is mounted on (/proc/self/mountinfo; False where there is none)."""
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        return False
    return False


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _save_json(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(data))
    os.chmod(path, 0o600)


def _load_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(_read(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.error("resolver backup %s is unreadable (%s); leaving the resolver as it is", path, exc)
        return None
    return data if isinstance(data, dict) else None


class ResolvConf:
    def __init__(self, state_dir: Path, path: Path = RESOLV_CONF) -> None:
        self._path = path
        self._backup = state_dir / BACKUP_NAME

    @property
    def applied(self) -> bool:
        return self._backup.exists()

    def original_upstreams(self) -> list[Endpoint]:
        saved = _load_json(self._backup)
        text = str(saved.get("content", "")) if saved else None
        if text is None:
            try:
                text = _read(self._path)
            except OSError:
                return []
        return nameservers(text)

    def apply(self, listen: Endpoint) -> None:
        if listen.port != 53:
            raise ResolverConfigError(f"resolv.conf can only name a server on port 53, not {listen}")
        try:
            if not self._backup.exists():  # after a crash the first backup is the original
                link = os.readlink(self._path) if self._path.is_symlink() else None
                _save_json(
                    self._backup,
                    {
                        "kind": "resolv.conf",
                        "path": str(self._path),
                        "symlink": link,
                        "content": _read(self._path),
                    },
                )
            options = "options edns0 trust-ad"
            _write_atomic(self._path, f"{MARKER}\nnameserver {listen.ip}\n{options}\n")
        except OSError as exc:
            raise ResolverConfigError(f"cannot point {self._path} at the DNS filter: {exc}") from exc
        logger.info("resolver: %s now names the DNS filter %s", self._path, listen.ip)

    def restore(self) -> bool:
        saved = _load_json(self._backup)
        if saved is None:
            return False
        try:
            current = _read(self._path)
        except OSError:
            current = ""
        try:
            if current.startswith(MARKER) or not current.strip():
                link = saved.get("symlink")
                if isinstance(link, str):
                    tmp = self._path.with_name(f".{self._path.name}.restore")
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                    os.symlink(link, tmp)
                    os.replace(tmp, self._path)
                else:
                    _write_atomic(self._path, str(saved.get("content", "")))
                logger.info("resolver: %s restored", self._path)
            else:
                logger.warning("resolver: %s was changed by someone else since; left as it is", self._path)
            self._backup.unlink()
        except OSError as exc:
            raise ResolverConfigError(f"cannot restore {self._path}: {exc}") from exc
        return True


class ResolvedDropIn:
    def __init__(
        self,
        state_dir: Path,
        dropin_dir: Path = RESOLVED_DROPIN_DIR,
        *,
        upstreams_file: Path = RESOLVED_UPSTREAMS,
        reload: Callable[[], None] | None = None,
    ) -> None:
        self._dir = dropin_dir
        self._file = dropin_dir / DROPIN_NAME
        self._backup = state_dir / BACKUP_NAME
        self._upstreams_file = upstreams_file
        self._reload = reload or reload_resolved

    @property
    def applied(self) -> bool:
        return self._backup.exists()

    def original_upstreams(self) -> list[Endpoint]:
        saved = _load_json(self._backup)
        listed = saved.get("upstreams") if saved else None
        if isinstance(listed, list):
            return [Endpoint(str(ip), 53) for ip in listed]
        try:
            return nameservers(_read(self._upstreams_file))
        except OSError:
            return []

    def apply(self, listen: Endpoint) -> None:
        try:
            if not self._backup.exists():
                ups = [e.ip for e in self.original_upstreams()]
                _save_json(self._backup, {"kind": "resolved", "path": str(self._file), "upstreams": ups})
            self._dir.mkdir(parents=True, exist_ok=True)
            server = listen.ip if listen.port == 53 else f"{listen.ip}:{listen.port}"
            _write_atomic(self._file, f"{MARKER}\n[Resolve]\nDNS={server}\nDomains=~.\n")
        except OSError as exc:
            raise ResolverConfigError(f"cannot write {self._file}: {exc}") from exc
        self._reload()
        logger.info("resolver: systemd-resolved forwards to the DNS filter %s", listen)

    def restore(self) -> bool:
        if _load_json(self._backup) is None and not self._file.exists():
            return False
        try:
            if self._file.exists() and _read(self._file).startswith(MARKER):
                self._file.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._backup.unlink()
        except OSError as exc:
            raise ResolverConfigError(f"cannot remove {self._file}: {exc}") from exc
        self._reload()
        logger.info("resolver: systemd-resolved drop-in removed")
        return True


def reload_resolved() -> None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return
    try:
        subprocess.run(
            [systemctl, "try-reload-or-restart", "systemd-resolved.service"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.error("cannot reload systemd-resolved: %s", exc)


def resolved_in_charge(resolv_conf: Path = RESOLV_CONF) -> bool:
    """systemd-resolved runs and /etc/resolv.conf is its stub (a link into /run/systemd/resolve)."""
    try:
        target = os.readlink(resolv_conf) if resolv_conf.is_symlink() else ""
    except OSError:
        return False
    return "systemd/resolve" in target and Path("/run/systemd/resolve").is_dir()


def choose_resolver(
    state_dir: Path, resolv_conf: Path = RESOLV_CONF, dropin_dir: Path = RESOLVED_DROPIN_DIR
) -> ResolverConfig:
    """The way this machine expects; a backup left by an earlier run decides for itself."""
    saved = _load_json(state_dir / BACKUP_NAME)
    kind = saved.get("kind") if saved else None
    if kind == "resolved" or (kind is None and resolved_in_charge(resolv_conf)):
        return ResolvedDropIn(state_dir, dropin_dir)
    return ResolvConf(state_dir, resolv_conf)


def restore_left_over(state_dir: Path, resolvers: Sequence[ResolverConfig] | None = None) -> bool:
    """At start and from the uninstall hook: undo what an agent that did not stop cleanly left."""
    restored = False
    for resolver in resolvers or [choose_resolver(state_dir)]:
        if resolver.applied:
            restored = resolver.restore() or restored
    return restored


__all__ = [
    "MARKER",
    "ResolvConf",
    "ResolvedDropIn",
    "ResolverConfig",
    "ResolverConfigError",
    "choose_resolver",
    "nameservers",
    "restore_left_over",
]
