"""Shared fixtures for real processes and sockets (used by tests/conftest.py and bench/).

    with ProcessReaper() as reaper:
        proc = spawn_named_process("qbittorrent-stub", Listen("tcp", "::1"), reaper=reaper, exe_dir=d)
        proc.pid, proc.exe, proc.cmdline, proc.listening[0].local  # ('::1', 41234)

Nothing here needs pytest.
"""

from tests.support.ports import free_port, free_ports
from tests.support.reaper import ProcessReaper, die_with_parent
from tests.support.spawn import (
    Connect,
    Link,
    Listen,
    Pairs,
    PairSet,
    SocketSpec,
    SpawnedProcess,
    SpawnFn,
    named_executable,
    shared_exe_dir,
    spawn_named_process,
)

__all__ = [
    "Connect",
    "Link",
    "Listen",
    "PairSet",
    "Pairs",
    "ProcessReaper",
    "SocketSpec",
    "SpawnFn",
    "SpawnedProcess",
    "die_with_parent",
    "free_port",
    "free_ports",
    "named_executable",
    "shared_exe_dir",
    "spawn_named_process",
]
