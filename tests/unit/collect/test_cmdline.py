"""Command lines are bounded where they are collected, with a marker saying what was cut."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from endpoint_agent.collect.cmdline import (
    CMDLINE_MAX_CHARS,
    CUT_PREFIX,
    bound_cmdline,
    cut_marker,
    is_cut,
    read_cmdline,
)
from endpoint_agent.collect.incremental import read_details
from tests.support import ProcessReaper
from tests.support.reaper import die_with_parent

LINUX = sys.platform.startswith("linux")


def test_short_command_lines_are_kept_as_they_are() -> None:
    args = ("/usr/bin/qbittorrent", "--profile", "x y")
    assert bound_cmdline(args) == args
    assert not is_cut(args)


def test_a_long_argument_is_cut_and_the_marker_counts_what_was_left_out() -> None:
    args = ["prog", "a" * 10_000, "tail"]
    out = bound_cmdline(args, 100)
    assert out[0] == "prog" and out[1] == "a" * 95  # "prog" and its separator take 5
    assert out[-1] == cut_marker(10_000 - 95 + len(" tail"))
    assert is_cut(out)
    assert sum(len(a) + 1 for a in out[:-1]) <= 101


def test_exactly_at_the_limit_nothing_is_cut() -> None:
    args = ["x" * 10, "y" * 9]  # 10 + 1 + 9 = 20 characters
    assert bound_cmdline(args, 20) == tuple(args)
    assert is_cut(bound_cmdline(["x" * 10, "y" * 10], 20))


@pytest.mark.skipif(not LINUX, reason="/proc is Linux")
def test_a_real_process_with_megabytes_of_arguments_is_read_bounded() -> None:
    big = ["z" * (128 * 1024 - 1)] * 15  # the kernel's per-argument maximum, 15 times
    with ProcessReaper() as reaper:
        proc = reaper.track(
            subprocess.Popen(
                ["sh", "-c", "sleep 60; :", "sh", *big],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )
        full = psutil.Process(proc.pid).cmdline()
        out = read_cmdline(proc.pid)
        assert out is not None and is_cut(out)
        assert out[:4] == ("sh", "-c", "sleep 60; :", "sh")
        assert sum(len(a) + 1 for a in out[:-1]) <= CMDLINE_MAX_CHARS + 1
        omitted = int(out[-1][len(CUT_PREFIX) :].split()[0])
        assert omitted == len(" ".join(full)) - sum(len(a) + 1 for a in out[:-1]) + 1
        # The collectors' reader gives the same bounded line.
        details = read_details(proc.pid)
        assert details is not None and details.cmdline == out


@pytest.mark.skipif(not LINUX, reason="/proc is Linux")
def test_ordinary_processes_read_as_psutil_reads_them() -> None:
    with ProcessReaper() as reaper:
        proc = reaper.track(
            subprocess.Popen(
                ["sh", "-c", "sleep 60; :", "with space", ""],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        )
        assert read_cmdline(proc.pid) == tuple(psutil.Process(proc.pid).cmdline())
    assert read_cmdline(2**22 + 7) is None  # no such process
