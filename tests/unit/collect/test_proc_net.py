"""/proc/net tables against real loopback sockets (compared with psutil), and socket inodes per PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from endpoint_agent.collect.proc_net import (
    SocketRecord,
    inode_owners,
    parse_table,
    read_connections,
    socket_inodes_of,
)
from endpoint_agent.types import Endpoint
from tests.support import Listen, ProcessReaper, SpawnedProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net is Linux only")


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def endpoint(addr: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    return Endpoint(addr[0], addr[1])


@pytest.fixture
def sockets() -> Iterator[dict[str, socket.socket]]:
    """TCP and UDP on 127.0.0.1 and ::1, plus a dual-stack socket talking IPv4 (v4-mapped)."""
    held: dict[str, socket.socket] = {}
    try:
        for name, family, host in (("v4", socket.AF_INET, "127.0.0.1"), ("v6", socket.AF_INET6, "::1")):
            listener = held[f"{name}-listen"] = socket.socket(family, socket.SOCK_STREAM)
            listener.bind((host, 0))
            listener.listen()
            held[f"{name}-client"] = socket.create_connection(listener.getsockname()[:2])
            held[f"{name}-server"] = listener.accept()[0]
            udp = held[f"{name}-udp-bound"] = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((host, 0))
            peer = held[f"{name}-udp-connected"] = socket.socket(family, socket.SOCK_DGRAM)
            peer.connect(udp.getsockname()[:2])
        dual = held["dual-listen"] = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen()
        held["dual-client"] = socket.create_connection(("127.0.0.1", dual.getsockname()[1]))
        held["dual-server"] = dual.accept()[0]
        yield held
    finally:
        for sock in held.values():
            sock.close()


def test_records_describe_our_sockets(sockets: dict[str, socket.socket]) -> None:
    by_inode = {r.inode: r for r in read_connections()}
    for name, sock in sockets.items():
        record = by_inode[inode(sock)]
        assert record.family == ("ipv4" if sock.family == socket.AF_INET else "ipv6"), name
        assert record.proto == ("tcp" if sock.type == socket.SOCK_STREAM else "udp"), name
        assert record.laddr == endpoint(sock.getsockname()), name
        assert record.uid == os.geteuid()
        if name.endswith(("listen", "bound")):
            assert record.raddr is None, name
        else:
            assert record.raddr == endpoint(sock.getpeername()), name
    assert by_inode[inode(sockets["v4-listen"])].status == "LISTEN"
    assert by_inode[inode(sockets["v6-client"])].status == "ESTABLISHED"
    assert by_inode[inode(sockets["v6-udp-connected"])].status == "NONE"
    server = by_inode[inode(sockets["dual-server"])]
    assert server.family == "ipv6" and server.raddr is not None
    assert server.laddr == Endpoint("::ffff:127.0.0.1", sockets["dual-listen"].getsockname()[1])


def test_records_agree_with_psutil(sockets: dict[str, socket.socket]) -> None:
    ours = {r.inode: r for r in read_connections()}
    compared = 0
    for conn in psutil.Process().net_connections("inet"):
        record = ours[os.fstat(conn.fd).st_ino]
        assert record.laddr == (endpoint(conn.laddr) if conn.laddr else None)
        assert record.raddr == (endpoint(conn.raddr) if conn.raddr else None)
        assert record.status == conn.status
        assert record.family == {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}[conn.family]
        compared += 1
    assert compared >= len(sockets)


def test_a_process_tables_are_its_namespace_tables(sockets: dict[str, socket.socket]) -> None:
    mine = {r.inode for r in read_connections(os.getpid())}
    assert {inode(s) for s in sockets.values()} <= mine


def test_kinds_select_tables(sockets: dict[str, socket.socket]) -> None:
    records = read_connections(kinds=("udp6",))
    assert records and {(r.family, r.proto) for r in records} == {("ipv6", "udp")}


HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_bad_lines_are_skipped_and_good_ones_kept() -> None:
    good = (
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4711 1\n"
    )
    lines = [
        "garbage\n",
        "   1: 0100007F:1F90 00000000:0000 0A\n",  # too short
        "   2: 0100007Z:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 12 1\n",  # bad hex
        "   3: 01007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 13 1\n",  # 3-byte ip
        # an IPv6 address in the IPv4 table
        "   4: 00000000000000000000000001000000:0050 00000000:0000 0A 0:0 00:0 0 0 0 14 1\n",
        "   5: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 x 1\n",  # bad inode
    ]
    records = parse_table(HEADER + "".join(lines) + good, "tcp")
    assert records == [
        SocketRecord("ipv4", "tcp", Endpoint("127.0.0.1", 8080), None, "LISTEN", inode=4711, uid=1000)
    ]
    assert parse_table("", "tcp") == [] and parse_table(HEADER, "udp6") == []


def test_ipv6_words_are_in_kernel_byte_order() -> None:
    # ::1 and 2001:db8::1 as a little-endian kernel prints them (each 32-bit word byte-swapped).
    if sys.byteorder != "little":
        pytest.skip("the sample lines are from a little-endian machine")
    line = (
        "   0: 00000000000000000000000001000000:0050 B80D0120000000000000000001000000:01BB 01 "
        "00000000:00000000 00:00000000 00000000     0        0 99 1\n"
    )
    [record] = parse_table(HEADER + line, "tcp6")
    assert record.laddr == Endpoint("::1", 80) and record.raddr == Endpoint("2001:db8::1", 443)
    assert record.status == "ESTABLISHED"


def test_unknown_tcp_states_read_none() -> None:
    line = "   0: 0100007F:1F90 00000000:0000 0D 00000000:00000000 00:00000000 00000000  0 0 5 1\n"
    assert parse_table(HEADER + line, "tcp")[0].status == "NONE"


def test_missing_or_unreadable_tables_give_empty_results(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_bytes(b"\xff\xfe not ascii")
    assert read_connections(proc_root=str(tmp_path)) == []
    assert read_connections(123, proc_root=str(tmp_path)) == []


def test_vanished_pid_gives_empty_results() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_connections(child.pid) == []
    assert socket_inodes_of(child.pid) == set()


def test_socket_inodes_of_a_child(spawn: Callable[..., SpawnedProcess]) -> None:
    proc = spawn("inode-holder", Listen("tcp", "127.0.0.1"), Listen("udp", "::1"))
    inodes = socket_inodes_of(proc.pid)
    tables = {r.inode: r for r in read_connections(proc.pid)}
    assert inodes <= tables.keys()  # the child holds inet sockets only (its stdio are pipes)
    assert {(tables[i].proto, tables[i].laddr) for i in inodes} == {
        (link.proto, Endpoint(*link.local)) for link in proc.listening
    }


def test_shared_sockets_list_every_holder(sockets: dict[str, socket.socket], reaper: ProcessReaper) -> None:
    listener = sockets["v4-listen"]
    child = reaper.track(
        subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
            pass_fds=[listener.fileno()],
            start_new_session=True,
        )
    )
    owners = inode_owners([os.getpid(), child.pid, child.pid])
    assert owners[inode(listener)] == sorted([os.getpid(), child.pid])
    assert owners[inode(sockets["v4-client"])] == [os.getpid()]


def test_denied_fd_directory_gives_an_empty_set(sockets: dict[str, socket.socket]) -> None:
    """A process that dropped root cannot read our fds: an empty set, not an exception."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    assert socket_inodes_of(os.getpid())  # the control: root sees them
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            os.setresuid(65534, 65534, 65534)
            os.write(write_fd, repr(socket_inodes_of(os.getppid())).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        output = fh.read().decode()
    os.waitpid(pid, 0)
    assert output == "set()"
