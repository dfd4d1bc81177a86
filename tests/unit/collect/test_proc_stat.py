"""/proc/<pid>/stat parsing: the per-scan facts, identity (start ticks) and the exec fingerprint."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from endpoint_agent.collect.proc_stat import (
    CLOCK_TICKS,
    boot_time,
    create_time,
    list_pids,
    parse_stat,
    read_stat,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")

# A real line of a process named "a (b) c", whose layout fields were captured from Linux 6.x.
LINE = (
    b"4242 (a (b) c) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 299106 2000 100 "
    b"18446744073709551615 94875521097728 94875521174457 140723668376272 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 "
    b"94875521190000 94875521191000 94875530000000 140723668380138 140723668380202 140723668380202 "
    b"140723668381680 0\n"
)


def test_a_stat_line_with_spaces_and_parentheses_in_the_name() -> None:
    st = parse_stat(4242, LINE)
    assert st is not None
    assert (st.comm, st.state, st.ppid, st.start_ticks) == ("a (b) c", "S", 17, 299106)
    assert st.image == (
        94875521097728, 94875521174457, 140723668376272,
        140723668380138, 140723668380202, 140723668380202, 140723668381680,
    )  # fmt: skip
    assert st.image_known and not st.kernel_thread and not st.zombie


@pytest.mark.parametrize("data", [b"", b"garbage", b"1 (x) S", b"1 (x) S notanumber 1 2 3"])
def test_bad_lines_give_none(data: bytes) -> None:
    assert parse_stat(1, data) is None


def test_reading_ourselves_matches_psutil() -> None:
    st = read_stat(os.getpid())
    assert st is not None
    me = psutil.Process()
    assert st.ppid == os.getppid() and st.comm == me.name()[:15]
    btime = boot_time()
    assert btime is not None
    assert create_time(st.start_ticks, btime) == pytest.approx(me.create_time(), abs=1 / CLOCK_TICKS)
    assert os.getpid() in list_pids()


def test_kernel_threads_are_flagged() -> None:
    st = read_stat(2)  # kthreadd in the initial PID namespace
    if st is None or st.comm != "kthreadd":
        pytest.skip("not in the initial PID namespace")
    assert st.kernel_thread and not st.image_known


def test_a_vanished_pid_gives_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_stat(child.pid) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the layout is shown to a reader allowed to ptrace (root)")
def test_an_exec_of_the_same_program_changes_the_image_but_not_the_identity() -> None:
    after_exec = "print('execd', flush=True); import time; time.sleep(30)"
    code = (
        "import os, sys; sys.stdin.readline();"
        f" os.execv(sys.executable, [sys.executable, '-c', {after_exec!r}])"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        before = read_stat(child.pid)
        assert before is not None and before.image_known
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"execd\n"  # the same binary, now with other arguments
        after = read_stat(child.pid)
        assert after is not None
        assert after.image != before.image
        assert (after.pid, after.start_ticks, after.comm) == (before.pid, before.start_ticks, before.comm)
    finally:
        child.kill()
        child.wait()
