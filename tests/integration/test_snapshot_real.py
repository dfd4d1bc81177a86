"""The snapshot of real processes under chosen names, holding real loopback sockets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from endpoint_agent.collect import Collector, collect_snapshot
from endpoint_agent.collect.hashing import FileVersion, HashCache, HashResult
from endpoint_agent.types import Connection, Direction, Endpoint, Snapshot
from tests.support import Connect, Listen, Pairs, ProcessReaper, SpawnFn, spawn_named_process

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def conns(snap: Snapshot, pid: int) -> list[Connection]:
    return [c for c in snap.connections if c.pid == pid]


def test_named_process_is_in_the_snapshot_with_its_identity(spawn: SpawnFn) -> None:
    before = time.time()
    proc = spawn("qbittorrent-stub", args=["--seed", "ubuntu.iso"])
    snap = collect_snapshot()
    info = snap.processes[proc.pid]
    me = psutil.Process()
    assert info.name == "qbittorrent-stub"  # 16 chars: longer than the kernel's 15-char comm
    assert info.exe == str(proc.exe)
    assert info.cmdline == proc.cmdline
    assert info.cmdline[-2:] == ("--seed", "ubuntu.iso")
    assert (info.username, info.uid) == (me.username(), me.uids().real)
    assert info.create_time == psutil.Process(proc.pid).create_time()
    assert before - 2 <= info.create_time <= time.time() + 2  # boot-time based clock: 1 s granularity
    assert info.sha256 == sha256_file(proc.exe)
    assert (info.ppid, info.parent_name) == (os.getpid(), me.name())
    assert not info.partial
    assert not info.kernel_thread


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("program", ["sleep", "python"])
def test_process_of_another_user(spawn: SpawnFn, program: str) -> None:
    proc = spawn(f"nobody-{program}", program=program, user="nobody")
    info = collect_snapshot().processes[proc.pid]
    assert (info.username, info.uid) == ("nobody", 65534)
    assert info.name == f"nobody-{program}"
    assert info.sha256 == sha256_file(proc.exe)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_listener_is_listen_with_its_port(spawn: SpawnFn, host: str) -> None:
    proc = spawn("listen-stub", Listen("tcp", host))
    port = proc.listening[0].local[1]
    mine = conns(collect_snapshot(), proc.pid)
    assert [(c.direction, c.proto, c.family, c.laddr, c.raddr, c.status) for c in mine] == [
        (Direction.LISTEN, "tcp", "ipv6" if ":" in host else "ipv4", Endpoint(host, port), None, "LISTEN")
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_bound_udp_socket_is_listen(spawn: SpawnFn, host: str) -> None:
    proc = spawn("udp-stub", Listen("udp", host))
    port = proc.listening[0].local[1]
    mine = conns(collect_snapshot(), proc.pid)
    assert [(c.direction, c.proto, c.laddr, c.raddr) for c in mine] == [
        (Direction.LISTEN, "udp", Endpoint(host, port), None)
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_connection_between_two_processes(spawn: SpawnFn, host: str) -> None:
    server = spawn("server-stub", Listen("tcp", host))
    port = server.listening[0].local[1]
    client = spawn("client-stub", Connect(port, "tcp", host))
    (accepted,) = server.wait_accepted(1)
    local = client.connected[0].local
    snap = collect_snapshot()

    client_conns = conns(snap, client.pid)
    assert [(c.direction, c.laddr, c.raddr, c.status) for c in client_conns] == [
        (Direction.OUTBOUND, Endpoint(*local), Endpoint(host, port), "ESTABLISHED")
    ]
    server_conns = sorted(conns(snap, server.pid), key=lambda c: c.status)
    assert [(c.direction, c.laddr, c.raddr) for c in server_conns] == [
        (Direction.INBOUND, Endpoint(host, port), Endpoint(*local)),
        (Direction.LISTEN, Endpoint(host, port), None),
    ]
    assert accepted.remote == local


def test_connected_pairs_in_one_process(spawn: SpawnFn) -> None:
    proc = spawn("pair-stub", Pairs(3, "127.0.0.1"), Pairs(1, "::1"))
    by_local = {(c.laddr, c.raddr): c.direction for c in conns(collect_snapshot(), proc.pid)}
    for pair_set in proc.pairs:
        for link in pair_set.clients:
            assert by_local[(Endpoint(*link.local), Endpoint(*link.remote))] == Direction.OUTBOUND
        for link in pair_set.servers:
            assert by_local[(Endpoint(*link.local), Endpoint(*link.remote))] == Direction.INBOUND
        assert by_local[(Endpoint(*pair_set.listener), None)] == Direction.LISTEN
    assert len(by_local) == 3 * 2 + 1 + 1 * 2 + 1


def test_connected_udp_socket_is_outbound(spawn: SpawnFn) -> None:
    server = spawn("udp-server-stub", Listen("udp", "127.0.0.1"))
    port = server.listening[0].local[1]
    client = spawn("udp-client-stub", Connect(port, "udp", "127.0.0.1"))
    mine = conns(collect_snapshot(), client.pid)
    assert [(c.direction, c.proto, c.raddr) for c in mine] == [
        (Direction.OUTBOUND, "udp", Endpoint("127.0.0.1", port))
    ]


def test_exited_unreaped_process_gives_a_partial_record(reaper: ProcessReaper, exe_dir: Path) -> None:
    """A process that exits during the scan is a zombie until reaped: no exe, no cmdline."""
    proc = spawn_named_process("short-lived", reaper=reaper, exe_dir=exe_dir, program="sleep", args=["0"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:  # not reaped: no poll()
        assert time.monotonic() < deadline, "sleep 0 did not exit"
        time.sleep(0.01)
    info = collect_snapshot().processes[proc.pid]
    assert info.partial
    assert info.name == "short-lived"
    assert (info.exe, info.cmdline, info.sha256) == (None, (), None)
    assert not info.kernel_thread


def test_binary_is_hashed_once_across_scans_and_again_when_touched(
    reaper: ProcessReaper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = spawn_named_process("hash-stub", reaper=reaper, exe_dir=tmp_path, program="sleep")
    reads: list[str] = []
    original = HashCache._read_digest

    def spy(self: HashCache, path: str) -> tuple[HashResult, FileVersion | None]:
        reads.append(path)
        return original(self, path)

    monkeypatch.setattr(HashCache, "_read_digest", spy)
    collector = Collector()
    own = f"/proc/{proc.pid}/exe"
    digests = [collector.snapshot().processes[proc.pid].sha256 for _ in range(3)]
    assert reads.count(own) == 1
    assert digests == [sha256_file(proc.exe)] * 3

    st = proc.exe.stat()
    os.utime(proc.exe, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert collector.snapshot().processes[proc.pid].sha256 == digests[0]
    assert reads.count(own) == 2


def test_deleted_executable_is_hashed_from_the_running_image(reaper: ProcessReaper, tmp_path: Path) -> None:
    proc = spawn_named_process("deleted-stub", reaper=reaper, exe_dir=tmp_path, program="sleep")
    expected = sha256_file(proc.exe)
    proc.exe.unlink()
    info = collect_snapshot().processes[proc.pid]
    assert info.sha256 == expected
    assert info.exe == str(proc.exe)
    assert not info.partial


def test_replaced_executable_is_hashed_from_the_running_image(reaper: ProcessReaper, tmp_path: Path) -> None:
    """An attacker swapping the file at the path must not change what the running process hashes to."""
    proc = spawn_named_process("swapped-stub", reaper=reaper, exe_dir=tmp_path, program="sleep")
    expected = sha256_file(proc.exe)
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"#!/bin/sh\necho harmless\n")
    decoy.rename(proc.exe)
    assert collect_snapshot().processes[proc.pid].sha256 == expected


@needs_root
@pytest.mark.root
def test_pid_2_in_a_pid_namespace_is_not_a_kernel_thread(tmp_path: Path) -> None:
    """Inside `unshare --pid`, pid 2 and its children are ordinary: the ppid==2 heuristic would lie."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    sh = tmp_path / "ns-shell"
    shutil.copyfile(shutil.which("sh") or "/bin/sh", sh)
    sh.chmod(0o755)
    script = (
        "import json, subprocess, sys, time\n"
        "from endpoint_agent.collect import collect_snapshot\n"
        f"p = subprocess.Popen([{str(sh)!r}, '-c', 'sleep 30 & wait'])\n"
        "deadline = time.monotonic() + 10\n"
        "while True:\n"
        "    snap = collect_snapshot()\n"
        "    if any(q.ppid == p.pid for q in snap.processes.values()) or time.monotonic() > deadline:\n"
        "        break\n"
        "    time.sleep(0.01)\n"
        "print(json.dumps({q.pid: [q.ppid, q.name, q.kernel_thread] for q in snap.processes.values()}))\n"
        "p.kill(); p.wait()\n"
    )
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    if out.returncode != 0 and "unshare" in out.stderr:
        pytest.skip(f"cannot create a PID namespace: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    seen = {int(pid): tuple(v) for pid, v in json.loads(out.stdout).items()}
    assert seen[2][1] == "ns-shell"
    assert any(ppid == 2 for ppid, _, _ in seen.values()), seen
    assert not any(kthread for _, _, kthread in seen.values()), seen
