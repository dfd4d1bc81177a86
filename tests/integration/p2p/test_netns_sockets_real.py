"""The collector with the all-namespace socket source sees a process inside another namespace."""

from __future__ import annotations

import os
import socket
import sys

from bench.detect.sandbox import LineReader, LoopbackNamespace, missing_requirements
from endpoint_agent.collect import Collector
from endpoint_agent.collect.netns_sockets import all_namespace_sockets
from endpoint_agent.types import Direction
from tests.support.ci_skip import require

LISTENER = """
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.9", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname()); acc, _ = srv.accept()
print(srv.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_sockets_of_another_namespace_carry_its_id_and_owner() -> None:
    require(missing_requirements())
    with LoopbackNamespace() as ns, socket.socket() as host_listener:
        host_listener.bind(("127.0.0.1", 0))
        host_listener.listen()
        host_port = host_listener.getsockname()[1]
        child = ns.popen([sys.executable, "-c", LISTENER], stdout_pipe=True)
        port = int(LineReader(child, "listener").readline(timeout=20))
        snapshot = Collector(sockets=all_namespace_sockets).snapshot()
    mine = [c for c in snapshot.connections if c.pid == child.pid]
    assert {(c.direction, c.netns) for c in mine} == {
        (Direction.LISTEN, ns.netns_id),
        (Direction.OUTBOUND, ns.netns_id),
        (Direction.INBOUND, ns.netns_id),
    }
    listen = next(c for c in mine if c.direction is Direction.LISTEN)
    assert listen.laddr is not None and (listen.laddr.ip, listen.laddr.port) == ("127.0.0.9", port)
    # The agent's own namespace is not labelled: netns names only the foreign ones.
    ours = [c for c in snapshot.connections if c.pid == os.getpid() and c.laddr and c.laddr.port == host_port]
    assert [(c.direction, c.netns) for c in ours] == [(Direction.LISTEN, None)]


def test_psutil_default_does_not_see_the_other_namespace() -> None:
    """Why the source exists: the plain collector misses the sandboxed process's sockets."""
    require(missing_requirements())
    with LoopbackNamespace() as ns:
        child = ns.popen([sys.executable, "-c", LISTENER], stdout_pipe=True)
        LineReader(child, "listener").readline(timeout=20)
        snapshot = Collector().snapshot()
    assert child.pid in snapshot.processes
    assert not [c for c in snapshot.connections if c.pid == child.pid]
