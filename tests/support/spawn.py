"""Real processes under chosen names, optionally holding real sockets.

`spawn_named_process("qbittorrent-stub", ...)` runs a hard copy of a real binary (the
Python interpreter, or `sleep`) saved under that name, so the kernel, psutil and the agent
all see that name: /proc/<pid>/comm, `psutil.Process.name()` and the basename of `exe`.
The Python variant runs tests/support/child.py, which opens the sockets asked for and
reports the addresses the kernel chose, so no test depends on a port being free.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.support.reaper import ProcessReaper, die_with_parent

CHILD_SCRIPT = Path(__file__).with_name("child.py")
Program = Literal["python", "sleep"]

Address = tuple[str, int]


@dataclass(frozen=True)
class Listen:
    """A TCP listener (accepting in the background) or a bound UDP socket."""

    proto: Literal["tcp", "udp"] = "tcp"
    host: str = "127.0.0.1"
    port: int = 0
    accept: bool = True


@dataclass(frozen=True)
class Connect:
    """A TCP connection, or a connected UDP socket, to host:port."""

    port: int
    proto: Literal["tcp", "udp"] = "tcp"
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class Pairs:
    """`count` TCP connections to a private listener of the same process (both ends held)."""

    count: int = 1
    host: str = "127.0.0.1"


SocketSpec = Listen | Connect | Pairs


@dataclass(frozen=True)
class Link:
    """One connected socket: its own address and its peer's."""

    proto: str
    local: Address
    remote: Address


@dataclass(frozen=True)
class PairSet:
    listener: Address
    clients: tuple[Link, ...]  # the connecting ends (outbound)
    servers: tuple[Link, ...]  # the accepted ends (inbound)


@dataclass
class SpawnedProcess:
    popen: subprocess.Popen[bytes]
    name: str
    exe: Path
    cmdline: tuple[str, ...]
    listening: tuple[Link, ...] = ()  # remote is ("", 0)
    connected: tuple[Link, ...] = ()
    pairs: tuple[PairSet, ...] = ()
    _events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_accepted(self, count: int = 1, timeout: float = 10.0) -> list[Link]:
        """Block until this process's listeners accepted `count` connections in total."""
        deadline = time.monotonic() + timeout
        while True:
            accepted = [e for e in self._events if e["event"] == "accepted"]
            if len(accepted) >= count:
                return [Link("tcp", _address(e["local"]), _address(e["remote"])) for e in accepted]
            self._read_event(deadline)

    def _read_event(self, deadline: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"{self.name} (pid {self.pid}) said nothing in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{self.name} (pid {self.pid}) exited: {_stderr(self.popen)}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        self._events.append(event)
        return event


# The `spawn` fixture: spawn(name, *sockets, program=..., args=..., user=...) -> SpawnedProcess.
SpawnFn = Callable[..., SpawnedProcess]


def named_executable(name: str, directory: Path, program: Program = "python") -> Path:
    """A hard copy (not a link: its own inode, `exe` is this path) of `program` named `name`."""
    target = directory / name
    if not target.exists():
        source = _source_binary(program)
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(source, tmp)
        tmp.chmod(0o755)
        tmp.rename(target)  # atomic: concurrent users never run a half-written copy
    return target


def _source_binary(program: Program) -> Path:
    if program == "python":
        return Path(os.path.realpath(sys.executable))
    found = shutil.which("sleep")
    if found is None:
        raise RuntimeError("no `sleep` binary on PATH")
    return Path(os.path.realpath(found))


def shared_exe_dir(prefix: str = "ea-test-bin-") -> Path:
    """A directory every user may traverse (copies run as other users must be reachable)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


def spawn_named_process(
    name: str,
    *sockets: SocketSpec,
    reaper: ProcessReaper,
    exe_dir: Path,
    program: Program = "python",
    args: Sequence[str] = (),
    user: str | None = None,
    nofile: int = 0,
    timeout: float = 20.0,
) -> SpawnedProcess:
    """Start `name` (a copy of `program` in `exe_dir`), tracked by `reaper`, ready when returned.

    python: runs child.py with `args` appended to its command line; opens `sockets`;
    returns once they are open (or raises). sleep: `name infinity` (no sockets).
    `user` runs the process as that user (root only): python drops privileges after its
    sockets are open, sleep starts as that user.
    """
    exe = named_executable(name, exe_dir, program)
    if program == "sleep":
        if sockets:
            raise ValueError("a sleep process cannot hold sockets; use program='python'")
        return _spawn_sleep(name, exe, reaper=reaper, args=args, user=user)
    cmdline = (str(exe), "-S", "-s", str(CHILD_SCRIPT), *args)
    spec: dict[str, Any] = {"listen": [], "connect": [], "pairs": [], "nofile": nofile}
    for sock in sockets:
        if isinstance(sock, Listen):
            spec["listen"].append(
                {"proto": sock.proto, "host": sock.host, "port": sock.port, "accept": sock.accept}
            )
        elif isinstance(sock, Connect):
            spec["connect"].append({"proto": sock.proto, "host": sock.host, "port": sock.port})
        else:
            spec["pairs"].append({"host": sock.host, "count": sock.count})
            spec["nofile"] = max(spec["nofile"], 2 * sock.count + 64)
    if user is not None:
        entry = pwd.getpwnam(user)
        spec["uid"], spec["gid"] = entry.pw_uid, entry.pw_gid
    env = _python_env()
    env["EA_TEST_CHILD"] = json.dumps(spec)
    popen = reaper.track(
        subprocess.Popen(
            cmdline,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    )
    proc = SpawnedProcess(popen=popen, name=name, exe=exe, cmdline=cmdline)
    deadline = time.monotonic() + timeout
    while (event := proc._read_event(deadline))["event"] != "ready":
        pass
    proc.listening = tuple(Link(e["proto"], _address(e["local"]), ("", 0)) for e in event["listen"])
    proc.connected = tuple(
        Link(e["proto"], _address(e["local"]), _address(e["remote"])) for e in event["connect"]
    )
    proc.pairs = tuple(
        PairSet(
            listener=_address(p["listener"]),
            clients=tuple(Link("tcp", _address(c[0]), _address(c[1])) for c in p["clients"]),
            servers=tuple(Link("tcp", _address(s[0]), _address(s[1])) for s in p["servers"]),
        )
        for p in event["pairs"]
    )
    return proc


def _spawn_sleep(
    name: str, exe: Path, *, reaper: ProcessReaper, args: Sequence[str], user: str | None
) -> SpawnedProcess:
    cmdline = (str(exe), *(args or ("infinity",)))
    popen = reaper.track(
        subprocess.Popen(
            cmdline,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
            preexec_fn=die_with_parent(),
            user=user,
            group=pwd.getpwnam(user).pw_gid if user is not None else None,
            extra_groups=[] if user is not None else None,
        )
    )
    return SpawnedProcess(popen=popen, name=name, exe=exe, cmdline=cmdline)


def _python_env() -> dict[str, str]:
    """Environment for a copied interpreter: it cannot find its stdlib from its own location."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env["PYTHONHOME"] = f"{sys.base_prefix}:{sys.base_exec_prefix}"
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        env["LD_LIBRARY_PATH"] = str(libdir)
    return env


def _address(value: Sequence[Any]) -> Address:
    return (str(value[0]), int(value[1]))


def _stderr(popen: subprocess.Popen[bytes]) -> str:
    if popen.stderr is None:
        return ""
    try:
        popen.wait(2)
        return popen.stderr.read().decode(errors="replace").strip()[-2000:]
    except (subprocess.TimeoutExpired, OSError, ValueError):
        return ""
