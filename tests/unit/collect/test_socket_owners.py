"""SocketOwners: socket inodes joined to their holders, reading fds only where they can have changed."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import pytest

from endpoint_agent.collect.proc_net import SocketRecord, read_connections
from endpoint_agent.collect.proc_stat import read_stat
from endpoint_agent.collect.socket_owners import SocketOwners
from tests.support import Listen, SpawnFn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")

ME = os.getpid()


def ticks(pid: int) -> int:
    st = read_stat(pid)
    assert st is not None
    return st.start_ticks


def records_of(*inodes: int) -> list[SocketRecord]:
    """This namespace's records for these inodes (a bogus inode gets a made-up record)."""
    real = {r.inode: r for r in read_connections() if r.inode in inodes}
    return [real.get(i) or SocketRecord("ipv4", "tcp", None, None, "LISTEN", i, 0) for i in inodes]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_new_processes_are_walked_once_then_trusted(spawn: SpawnFn) -> None:
    child = spawn("ea-owners-child", Listen("tcp", "127.0.0.1"))
    [child_inode] = [
        r.inode for r in read_connections() if r.laddr and r.laddr.port == child.listening[0].local[1]
    ]
    owners = SocketOwners()
    live = {child.pid: ticks(child.pid)}
    got = owners.resolve(live, [([child.pid], records_of(child_inode))], {})
    assert got[child_inode] == [child.pid] and owners.stats.walks == 1
    owners.resolve(live, [([child.pid], records_of(child_inode))], {})
    assert owners.stats.walks == 1  # nothing changed: no fd was read


def test_a_socket_opened_later_is_found_by_a_targeted_search(listener: socket.socket) -> None:
    owners = SocketOwners()
    live = {ME: ticks(ME)}
    owners.resolve(live, [([ME], [])], {})
    with socket.socket() as later:
        later.bind(("127.0.0.1", 0))
        later.listen()
        got = owners.resolve(live, [([ME], records_of(inode(later)))], {ME: os.getuid()})
        assert got[inode(later)] == [ME]
        assert owners.stats.searches == 1


def test_a_socket_nobody_holds_is_searched_for_once(listener: socket.socket) -> None:
    owners = SocketOwners()
    live = {ME: ticks(ME)}
    ghost = 2**32 - 7  # no process holds this inode
    first = owners.resolve(live, [([ME], records_of(inode(listener), ghost))], {})
    assert ghost not in first and first[inode(listener)] == [ME]
    searches = owners.stats.searches
    owners.resolve(live, [([ME], records_of(inode(listener), ghost))], {})
    assert owners.stats.searches == searches  # remembered as ownerless while it stays in the tables


def test_exited_processes_and_reused_pids_are_dropped(spawn: SpawnFn) -> None:
    child = spawn("ea-owners-gone", Listen("tcp", "127.0.0.1"))
    owners = SocketOwners()
    owners.resolve({child.pid: ticks(child.pid)}, [], {})
    assert owners.known(child.pid)
    owners.resolve({child.pid: ticks(child.pid) + 1}, [], {})  # the PID now names another instance
    assert owners.stats.walks == 2  # walked again as a new process
    owners.resolve({}, [], {})
    assert owners.known(child.pid) is None


def test_every_few_scans_everything_is_walked_again() -> None:
    owners = SocketOwners(rewalk_every=3)
    live = {ME: ticks(ME)}
    for _ in range(6):
        owners.resolve(live, [], {})
    assert owners.stats.full_walks == 2 and owners.stats.walks == 3  # first sight + two full walks


def test_tracked_a_new_socket_of_a_holder_is_found_without_looking_at_processes_that_hold_none(
    listener: socket.socket, spawn: SpawnFn
) -> None:
    quiet = [spawn(f"ea-owners-quiet-{i}", program="sleep") for i in range(5)]
    owners = SocketOwners()
    live = {ME: ticks(ME), **{p.pid: ticks(p.pid) for p in quiet}}
    every = [([*live], records_of(inode(listener)))]
    assert owners.resolve(live, every, {}, rewalk=())[inode(listener)] == [ME]
    looked: list[str] = []
    real_stat = os.stat
    with socket.socket() as later, pytest.MonkeyPatch.context() as mp:
        later.bind(("127.0.0.1", 0))
        later.listen()
        mp.setattr(os, "stat", lambda path, *a, **k: looked.append(str(path)) or real_stat(path, *a, **k))
        new = inode(later)
        got = owners.resolve(live, [([*live], records_of(inode(listener), new))], {}, rewalk=())
    assert got[new] == [ME] and owners.stats.searches == 1
    assert not any(f"/{p.pid}/" in path for p in quiet for path in looked)  # sleepers were never looked at
