"""`endpoint-agent install` / `uninstall`: put the service in place from the files this package carries.

    endpoint-agent install [--root DIR] [--start]     # unit (or plist), config, default policy, state dir
    endpoint-agent uninstall [--root DIR] [--purge]   # undo; --purge also removes config and state

The files come from endpoint_agent/data/ (the systemd unit, the launchd plist, the example config
and the default policy). The unit is written to start *this* installation's `endpoint-agent`
(a pipx venv, /opt/..., wherever it is). An existing config or policy is never overwritten. What
install wrote is listed, with its SHA-256, in a manifest in the state dir; uninstall removes those
files only while they are unchanged, so an edited config survives (unless --purge).
`--root DIR` installs under DIR instead of / (a staging tree); systemctl/launchctl run only with
`--start` on the real root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

from endpoint_agent.errors import AgentError

MANIFEST = "install-manifest.json"


class InstallError(AgentError):
    pass


@dataclass(frozen=True)
class Layout:
    """Where the service's files go on one platform (paths relative to the root)."""

    service_file: Path  # systemd unit or launchd plist
    service_source: str  # name under endpoint_agent/data/
    config_dir: Path
    state_dir: Path
    start: tuple[tuple[str, ...], ...]
    stop: tuple[tuple[str, ...], ...]


LINUX = Layout(
    service_file=Path("etc/systemd/system/endpoint-agent.service"),
    service_source="endpoint-agent.service",
    config_dir=Path("etc/endpoint-agent"),
    state_dir=Path("var/lib/endpoint-agent"),
    start=(("systemctl", "daemon-reload"), ("systemctl", "enable", "--now", "endpoint-agent")),
    stop=(("systemctl", "disable", "--now", "endpoint-agent"), ("systemctl", "daemon-reload")),
)
MACOS = Layout(
    service_file=Path("Library/LaunchDaemons/com.example.endpoint-agent.plist"),
    service_source="com.example.endpoint-agent.plist",
    config_dir=Path("Library/Application Support/endpoint-agent"),
    state_dir=Path("Library/Application Support/endpoint-agent/state"),
    start=(("launchctl", "bootstrap", "system", "/Library/LaunchDaemons/com.example.endpoint-agent.plist"),),
    stop=(("launchctl", "bootout", "system/com.example.endpoint-agent"),),
)


def layout() -> Layout:
    if sys.platform.startswith("linux"):
        return LINUX
    if sys.platform == "darwin":
        return MACOS
    raise InstallError(f"install: not supported on {sys.platform}; see packaging/README.md")


def data_file(name: str) -> bytes:
    """A file shipped in the wheel under endpoint_agent/data/."""
    try:
        return (resources.files("endpoint_agent") / "data" / name).read_bytes()
    except OSError as exc:
        raise InstallError(f"install: {name} is missing from this installation: {exc}") from exc


def agent_command() -> list[str]:
    """How the service starts this installation: its own console script, else this interpreter."""
    script = Path(sys.executable).parent / "endpoint-agent"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "endpoint_agent"]


def _service_text(lay: Layout, config: Path) -> bytes:
    command = [*agent_command(), "run", "--config", str(config)]
    text = data_file(lay.service_source).decode("utf-8")
    if lay is MACOS:
        args = "\n".join(f"        <string>{part}</string>" for part in command)
        head, rest = text.split("<key>ProgramArguments</key>", 1)
        _, tail = rest.split("</array>", 1)
        return f"{head}<key>ProgramArguments</key>\n    <array>\n{args}\n    </array>{tail}".encode()
    lines = [
        f"ExecStart={' '.join(_quote(part) for part in command)}" if line.startswith("ExecStart=") else line
        for line in text.splitlines()
    ]
    return ("\n".join(lines) + "\n").encode()


def _quote(part: str) -> str:
    return f'"{part}"' if any(c.isspace() for c in part) else part


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write `path` unless it exists; True when written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return True


def _run(commands: Sequence[Sequence[str]], out: TextIO) -> None:
    for command in commands:
        out.write("$ " + " ".join(command) + "\n")
        done = subprocess.run(list(command), check=False)
        if done.returncode != 0:
            raise InstallError(f"{' '.join(command)} failed (exit {done.returncode})")


def install(root: Path, *, start: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    lay = layout()
    root = root.absolute()
    config_dir, state_dir = root / lay.config_dir, root / lay.state_dir
    config = config_dir / "config.yaml"
    unit = _service_text(lay, Path("/") / lay.config_dir / "config.yaml")
    files = {
        root / lay.service_file: (unit, 0o644, True),
        config: (data_file("config.example.yaml"), 0o644, False),
        config_dir / "policy.yaml": (data_file("default-policy.yaml"), 0o644, False),
    }
    try:
        state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        written: dict[str, str] = {}
        for path, (data, mode, replace) in files.items():
            if replace and path.exists() and _manifest(state_dir).get(str(path.relative_to(root))):
                path.unlink()  # a unit from an earlier install: now pointing at this installation
            if _write_new(path, data, mode):
                written[str(path.relative_to(root))] = _sha256(data)
                out.write(f"installed {path}\n")
            else:
                out.write(f"kept existing {path}\n")
        manifest = {**_manifest(state_dir), **written}
        (state_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise InstallError(f"install: {exc.filename or root}: {exc.strerror or exc}") from exc
    if start and root == Path("/"):
        _run(lay.start, out)
    else:
        out.write(f"edit {config}, then start the service: {' && '.join(' '.join(c) for c in lay.start)}\n")
    return 0


def _manifest(state_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((state_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InstallError(f"uninstall: cannot read {state_dir / MANIFEST}: {exc}") from exc
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def uninstall(root: Path, *, purge: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    lay = layout()
    root = root.absolute()
    config_dir, state_dir = root / lay.config_dir, root / lay.state_dir
    manifest = _manifest(state_dir)
    if not manifest and not purge:
        raise InstallError(f"uninstall: nothing installed under {root} (no {state_dir / MANIFEST})")
    if root == Path("/") and shutil.which(lay.stop[0][0]) and (root / lay.service_file).exists():
        _run(lay.stop, out)
    if root == Path("/") and state_dir.is_dir():  # what a DNS filter changed (resolver, nftables)
        from endpoint_agent.dns.restore import restore_state_dir

        restore_state_dir(state_dir)
    for relative, digest in sorted(manifest.items()):
        path = root / relative
        try:
            if purge or _sha256(path.read_bytes()) == digest:
                path.unlink()
                out.write(f"removed {path}\n")
            else:
                out.write(f"kept {path}: changed since install (--purge removes it)\n")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InstallError(f"uninstall: {path}: {exc.strerror or exc}") from exc
    (state_dir / MANIFEST).unlink(missing_ok=True)
    if purge:
        for directory in (config_dir, state_dir):
            shutil.rmtree(directory, ignore_errors=True)
            out.write(f"removed {directory}\n")
        return 0
    if config_dir.is_dir() and not any(config_dir.iterdir()):
        config_dir.rmdir()
    out.write(f"kept {state_dir} (recorded violations); --purge removes it and {config_dir}\n")
    return 0
