"""Namespace grouping and socket-to-process joining, in the host namespace (see also test_netns_real)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from endpoint_agent.collect.netns import (
    collect_all_namespaces,
    group_by_netns,
    netns_of,
    read_namespace_tables,
)
from endpoint_agent.types import Endpoint
from tests.support import Listen, ProcessReaper, SpawnedProcess

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="network namespaces are Linux only"
)

Spawn = Callable[..., SpawnedProcess]


def vanished_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_namespace_ids_look_like_the_kernel_names_them() -> None:
    ns = netns_of("self")
    assert ns is not None and re.fullmatch(r"net:\[\d+\]", ns)
    assert netns_of(os.getpid()) == ns
    assert netns_of(vanished_pid()) is None


def test_group_by_netns_leaves_out_vanished_pids() -> None:
    gone = vanished_pid()
    groups = group_by_netns([os.getpid(), gone, os.getppid()])
    assert groups == {netns_of("self"): sorted([os.getpid(), os.getppid()])}


def test_host_namespace_sockets_are_joined_to_their_process(spawn: Spawn) -> None:
    proc = spawn("netns-listener", Listen("tcp", "127.0.0.1"), Listen("udp", "::1"))
    [host] = collect_all_namespaces([proc.pid])
    assert host.is_host and host.netns_id == netns_of("self") and host.pids == (proc.pid,)
    owned = {(s.record.proto, s.record.laddr) for s in host.records if s.pid == proc.pid}
    expected = {(link.proto, Endpoint(*link.local)) for link in proc.listening}
    assert owned == expected
    # The whole table is there; sockets of processes we did not ask about have no pid.
    assert all(s.pid in (proc.pid, None) for s in host.records)


def test_a_socket_shared_by_two_processes_is_listed_for_each(reaper: ProcessReaper) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        holder = reaper.track(
            subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()"],
                stdin=subprocess.PIPE,
                pass_fds=[listener.fileno()],
                start_new_session=True,
            )
        )
        bystander = reaper.track(
            subprocess.Popen(["sleep", "30"], start_new_session=True)
        )  # holds no inet socket
        [host] = collect_all_namespaces([os.getpid(), holder.pid, bystander.pid])
        inode = os.fstat(listener.fileno()).st_ino
    assert sorted(s.pid or 0 for s in host.records if s.record.inode == inode) == sorted(
        [os.getpid(), holder.pid]
    )
    assert bystander.pid not in {s.pid for s in host.records}


def test_every_process_on_the_machine_by_default() -> None:
    result = collect_all_namespaces()
    assert result[0].is_host and os.getpid() in result[0].pids
    assert sum(ns.is_host for ns in result) == 1


def test_tables_are_not_read_through_a_process_of_another_namespace() -> None:
    # The right candidates are dead or live elsewhere: nothing is read rather than the wrong table.
    assert read_namespace_tables("net:[1]", [os.getpid()]) is None
    assert read_namespace_tables(netns_of("self") or "", [vanished_pid()]) is None
    assert read_namespace_tables(netns_of("self") or "", [vanished_pid(), os.getpid()])


def test_a_caller_supplied_inode_map_is_used_instead_of_walking_fds(spawn: Spawn) -> None:
    proc = spawn("netns-cached", Listen("tcp", "127.0.0.1"))
    [host] = collect_all_namespaces([proc.pid], owners={})
    assert all(s.pid is None for s in host.records)
    listen = Endpoint(*proc.listening[0].local)
    assert any(s.record.laddr == listen for s in host.records)
