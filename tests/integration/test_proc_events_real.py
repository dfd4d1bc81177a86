"""The kernel's process connector, for real: needs root on Linux (skipped otherwise, never under CI)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from endpoint_agent.collect.proc_events import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    NETLINK_CONNECTOR,
    NLMSG_DONE,
    PROC_EVENT_EXEC,
    CommEvent,
    Event,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    Overrun,
    ProcEventSource,
    open_event_source,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process connector is Linux only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="subscribing to process events needs root"),
]

REPO = Path(__file__).resolve().parents[2]
TRUE = shutil.which("true") or "/bin/true"


@pytest.fixture
def source() -> Iterator[ProcEventSource]:
    src = open_event_source()
    assert src is not None, "process events unavailable although running as root (see the log)"
    try:
        yield src
    finally:
        src.close()


def collect_until(
    src: ProcEventSource, done: Callable[[list[Event]], bool], timeout: float = 10.0
) -> list[Event]:
    """Events until `done(events)` holds; fails (not hangs) after `timeout`."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        assert left > 0, f"expected events did not arrive; got {len(events)}"
        events.extend(src.wait(left))
    return events


def run_children(count: int, exit_code: int = 0) -> list[int]:
    pids = []
    for _ in range(count):
        child = subprocess.Popen([sys.executable, "-S", "-c", f"raise SystemExit({exit_code})"])
        child.wait()
        pids.append(child.pid)
    return pids


def test_spawned_processes_produce_fork_exec_and_exit_events(source: ProcEventSource) -> None:
    started = time.monotonic_ns()
    pids = run_children(3, exit_code=3)
    finished = time.monotonic_ns()

    def seen_all(events: list[Event]) -> bool:
        exited = {e.pid for e in events if isinstance(e, ExitEvent)}
        return set(pids) <= exited

    events = collect_until(source, seen_all)
    for pid in pids:
        [fork] = [e for e in events if isinstance(e, ForkEvent) and e.child_pid == pid]
        assert fork.parent_tgid == os.getpid() and not fork.is_thread
        execs = [e for e in events if isinstance(e, ExecEvent) and e.pid == pid]
        assert execs and execs[0].tgid == pid
        [exit_] = [e for e in events if isinstance(e, ExitEvent) and e.pid == pid]
        assert exit_.exit_code == 3 << 8  # wait status: exit code in the high byte
        # Kernel timestamps are CLOCK_MONOTONIC, the clock of time.monotonic_ns().
        assert started <= fork.timestamp_ns <= execs[0].timestamp_ns <= exit_.timestamp_ns <= finished


THREADED_RENAMER = (
    "import ctypes, threading, time\n"
    "t = threading.Thread(target=time.sleep, args=(0.05,)); t.start(); t.join()\n"
    "ctypes.CDLL(None).prctl(15, b'ea-renamed', 0, 0, 0)  # PR_SET_NAME\n"
)


def test_the_essential_source_gets_execs_renames_and_exits_of_processes_only() -> None:
    src = open_event_source(essential=True)
    assert src is not None
    with src:
        child = subprocess.Popen([sys.executable, "-S", "-c", THREADED_RENAMER])
        child.wait(10)
        events = collect_until(
            src, lambda evs: any(isinstance(e, ExitEvent) and e.pid == child.pid for e in evs)
        )
    mine = [e for e in events if getattr(e, "tgid", None) == child.pid]
    assert [type(e) for e in mine] == [ExecEvent, CommEvent, ExitEvent]  # no thread's start or end
    assert isinstance(mine[1], CommEvent) and mine[1].comm == "ea-renamed"
    assert not any(isinstance(e, ForkEvent) for e in events)  # forks never reach the reader


def test_a_burst_larger_than_the_buffer_is_reported_as_an_overrun_and_reading_goes_on() -> None:
    src = open_event_source(rcvbuf=1)  # the kernel rounds up to its minimum: a few events
    assert src is not None
    with src:
        run_children(40)
        events = collect_until(src, lambda evs: any(isinstance(e, Overrun) for e in evs))
        assert sum(isinstance(e, Overrun) for e in events) >= 1
        # Reading goes on: a later exec arrives. On a busy machine the tiny buffer can overflow
        # again before it does (another Overrun): then try again.
        for _ in range(10):
            while src.read():  # drain what survived
                pass
            [pid] = run_children(1)

            def seen(evs: list[Event], pid: int = pid) -> bool:
                return any(isinstance(e, Overrun) or (isinstance(e, ExecEvent) and e.pid == pid) for e in evs)

            if any(isinstance(e, ExecEvent) and e.pid == pid for e in collect_until(src, seen)):
                break
        else:
            pytest.fail("no exec event came through after the overrun")


def test_close_wakes_a_thread_blocked_in_wait(source: ProcEventSource) -> None:
    results: list[list[Event]] = []
    ended = threading.Event()

    def consume() -> None:
        for _ in source:  # ends when the source is closed
            pass
        results.append(source.wait(None))  # closed: returns at once
        ended.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.1)  # let it block in select (not asserted: the test passes either way it starts)
    source.close()
    assert ended.wait(10), "a waiting thread was not woken by close()"
    assert results == [[]]
    assert source.closed and source.read() == []


def run_python(code: str, *prefix: str, user: str | None = None) -> str:
    argv = [*prefix, sys.executable, "-c", code]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        user=user,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


PROBE = (
    "import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stdout);"
    "from endpoint_agent.collect.proc_events import open_event_source;"
    "print('source:', open_event_source(ack_timeout=5))"
)


def fork_unprivileged_probe() -> str:
    """open_event_source() in a forked child that dropped root for nobody (65534)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            result = open_event_source(ack_timeout=5)
            os.write(write_fd, repr(result).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        output = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return output


def test_an_unprivileged_process_gets_no_source() -> None:
    assert fork_unprivileged_probe() == "None"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing on CI (see .ci/system-packages.sh)")
        pytest.skip(f"{tool} is not installed")
    return path


def test_inside_a_network_namespace_there_is_no_source() -> None:
    out = run_python(PROBE, need("unshare"), "--net")
    assert out.endswith("source: None")
    assert "network namespace" in out


def test_inside_a_pid_namespace_there_is_no_source() -> None:
    out = run_python(PROBE, need("unshare"), "--pid", "--fork")
    assert out.endswith("source: None")
    assert "PID namespace" in out


def test_the_probe_itself_gets_a_source_in_the_initial_namespaces() -> None:
    # The control for the two tests above: the same probe, no namespace, succeeds.
    assert "ProcEventSource" in run_python(PROBE)


def test_events_forged_by_a_userspace_sender_are_dropped(source: ProcEventSource) -> None:
    """A privileged process can multicast to the connector's group; only the kernel (port 0) counts."""
    forged_pid = 2**31 - 1  # above PID_MAX_LIMIT: no real process has it
    payload = struct.pack("=IIQ", PROC_EVENT_EXEC, 0, 1) + struct.pack("=ii", forged_pid, forged_pid).ljust(
        24, b"\0"
    )
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    message = struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn
    with (
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR) as witness,
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR) as forger,
    ):
        witness.bind((0, CN_IDX_PROC))
        witness.settimeout(10)
        forger.bind((0, 0))
        forger.sendto(message, (0, CN_IDX_PROC))
        while True:  # the witness proves the forgery was delivered to the group
            data, (sender, _) = witness.recvfrom(8192)
            if data == message:
                assert sender == forger.getsockname()[0] != 0
                break
    [pid] = run_children(1)  # a real event after the forged one: once it is here, so is the forgery
    events = collect_until(source, lambda evs: any(isinstance(e, ExitEvent) and e.pid == pid for e in evs))
    assert not [e for e in events if isinstance(e, ExecEvent) and e.pid == forged_pid]


def test_without_the_namespace_check_the_missing_ack_still_refuses() -> None:
    """The kernel ignores a subscription from a PID namespace silently; the ack wait catches that."""
    probe = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stdout);"
        "import endpoint_agent.collect.proc_events as pe; pe._ns_inode = lambda name: None;"
        "print('source:', pe.open_event_source(ack_timeout=0.5))"
    )
    out = run_python(probe, need("unshare"), "--pid", "--fork")
    assert out.endswith("source: None")
    assert "no subscription ack" in out


def test_close_from_a_signal_handler_interrupting_wait_does_not_deadlock(source: ProcEventSource) -> None:
    fired: list[int] = []

    def on_alarm(signum: int, frame: object) -> None:
        fired.append(signum)
        if len(fired) == 1:
            source.close()  # the daemon's shutdown path, run inside the waiting thread
        else:
            raise TimeoutError("wait() was not released by close() from a signal handler")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.1, 5.0)  # second shot: the failsafe
    try:
        while not source.closed:  # other processes' events may return wait() before the alarm
            source.wait(None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == [signal.SIGALRM]
