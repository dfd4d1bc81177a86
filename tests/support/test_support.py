"""The fixture library itself: names, sockets, and that every process is reaped."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.support import Listen, ProcessReaper, free_port, free_ports, spawn_named_process
from tests.support.reaper import die_with_parent


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its (new) parent to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_reaper_kills_and_waits_every_process(tmp_path: Path) -> None:
    with ProcessReaper() as reaper:
        procs = [
            spawn_named_process("reap-py", Listen(), reaper=reaper, exe_dir=tmp_path),
            spawn_named_process("reap-sleep", reaper=reaper, exe_dir=tmp_path, program="sleep"),
        ]
        assert all(psutil.Process(p.pid).name() == p.name for p in procs)
    assert len(reaper) == 0
    assert all(p.popen.returncode is not None for p in procs)
    assert all(_gone(p.pid) for p in procs)


def test_reaper_reaps_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError), ProcessReaper() as reaper:
        proc = spawn_named_process("reap-raise", reaper=reaper, exe_dir=tmp_path, program="sleep")
        raise KeyError("boom")
    assert _gone(proc.pid)


def test_reaper_kills_what_the_process_forked() -> None:
    with ProcessReaper() as reaper:
        shell = reaper.track(
            subprocess.Popen(
                ["sh", "-c", "sleep 60 & echo $!; wait"],
                stdout=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )
        assert shell.stdout is not None
        grandchild = int(shell.stdout.readline())
    deadline = time.monotonic() + 10
    while not _dead(grandchild):  # reparented to init, which reaps it asynchronously
        assert time.monotonic() < deadline, "grandchild survived"
        time.sleep(0.01)


def test_reap_one(tmp_path: Path) -> None:
    with ProcessReaper() as reaper:
        a = spawn_named_process("reap-a", reaper=reaper, exe_dir=tmp_path, program="sleep")
        b = spawn_named_process("reap-b", reaper=reaper, exe_dir=tmp_path, program="sleep")
        reaper.reap_one(a.pid)
        assert _gone(a.pid)
        assert reaper.pids == [b.pid]
        assert psutil.pid_exists(b.pid)


def test_spawn_fails_loudly_when_the_child_cannot_start(tmp_path: Path) -> None:
    with ProcessReaper() as reaper, pytest.raises(RuntimeError, match="exited"):
        spawn_named_process("bad-listen", Listen("tcp", "192.0.2.1"), reaper=reaper, exe_dir=tmp_path)


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for host in ("127.0.0.1", "::1"):
        for proto in ("tcp", "udp"):
            assert 0 < free_port(proto, host) < 65536
    with pytest.raises(ValueError):
        free_port("tcp", "0.0.0.0")


def test_named_copy_is_its_own_file(tmp_path: Path) -> None:
    with ProcessReaper() as reaper:
        proc = spawn_named_process("copy-check", reaper=reaper, exe_dir=tmp_path, program="sleep")
        assert not proc.exe.is_symlink()
        assert os.path.realpath(psutil.Process(proc.pid).exe()) == str(proc.exe)
