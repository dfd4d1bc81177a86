"""Decoding of proc connector datagrams, and refusal where events are unavailable.

The datagrams are built byte for byte as the kernel lays them out (nlmsghdr, cn_msg,
proc_event); the real socket is exercised in tests/integration/test_proc_events_real.py.
"""

from __future__ import annotations

import logging
import struct

import pytest

from endpoint_agent.collect import proc_events
from endpoint_agent.collect.proc_events import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    NLMSG_DONE,
    PROC_EVENT_COMM,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    CommEvent,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    parse_datagram,
)

UNION_SIZE = 24  # sizeof(event_data): the largest member (exit, comm) is 24 bytes


def event(what: int, data: bytes, *, ts: int = 123_456_789, idx: int = CN_IDX_PROC, ack: int = 0) -> bytes:
    payload = struct.pack("=IIQ", what, 0, ts) + data.ljust(UNION_SIZE, b"\0")
    cn = struct.pack("=IIIIHH", idx, CN_VAL_PROC, 5, ack, len(payload), 0) + payload
    return struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 5, 0) + cn


EXEC = event(PROC_EVENT_EXEC, struct.pack("=ii", 4242, 4242))
FORK = event(PROC_EVENT_FORK, struct.pack("=iiii", 100, 100, 4243, 4242))
EXIT = event(PROC_EVENT_EXIT, struct.pack("=iiIIii", 4242, 4242, 3 << 8, 17, 100, 100))


def test_exec_fork_and_exit_events_are_decoded() -> None:
    assert parse_datagram(EXEC) == [ExecEvent(pid=4242, tgid=4242, timestamp_ns=123_456_789)]
    [fork] = parse_datagram(FORK)
    assert fork == ForkEvent(
        parent_pid=100, parent_tgid=100, child_pid=4243, child_tgid=4242, timestamp_ns=123_456_789
    )
    assert isinstance(fork, ForkEvent) and fork.is_thread
    [exit_] = parse_datagram(EXIT)
    assert exit_ == ExitEvent(
        pid=4242, tgid=4242, timestamp_ns=123_456_789, exit_code=3 << 8, exit_signal=17, parent_pid=100
    )


def test_exit_without_parent_fields_has_no_parent() -> None:
    # Kernels before 6.2 leave the parent fields zero.
    [exit_] = parse_datagram(event(PROC_EVENT_EXIT, struct.pack("=iiII", 7, 7, 0, 17)))
    assert isinstance(exit_, ExitEvent) and exit_.parent_pid is None


def test_several_messages_in_one_datagram_are_all_decoded() -> None:
    assert [type(e) for e in parse_datagram(FORK + EXEC + EXIT)] == [ForkEvent, ExecEvent, ExitEvent]


def test_other_event_kinds_and_foreign_connectors_are_ignored() -> None:
    uid_change = event(0x00000004, struct.pack("=iiII", 1, 1, 0, 0))
    other_connector = event(PROC_EVENT_EXEC, struct.pack("=ii", 1, 1), idx=CN_IDX_PROC + 1)
    assert parse_datagram(uid_change + other_connector + EXEC) == parse_datagram(EXEC)


def test_a_rename_is_decoded_with_its_new_name() -> None:
    [renamed] = parse_datagram(event(PROC_EVENT_COMM, struct.pack("=ii", 7, 7) + b"qbittorrent\0junk"))
    assert renamed == CommEvent(pid=7, tgid=7, timestamp_ns=123_456_789, comm="qbittorrent")
    [thread] = parse_datagram(event(PROC_EVENT_COMM, struct.pack("=ii", 8, 7) + b"\xff\xfe\0"))
    assert isinstance(thread, CommEvent) and thread.is_thread and thread.comm == "\udcff\udcfe"


def test_ack_is_decoded_but_never_mistaken_for_an_event() -> None:
    [ack] = parse_datagram(event(PROC_EVENT_NONE, struct.pack("=I", 1), ack=43))
    assert isinstance(ack, proc_events._Ack)  # consumed by open_event_source, never returned
    assert (ack.ack, ack.err) == (43, 1)


@pytest.mark.parametrize("cut", range(len(EXEC)))
def test_truncated_datagrams_never_raise_and_yield_nothing(cut: int) -> None:
    assert parse_datagram(EXEC[:cut]) == []


def test_lengths_that_lie_are_rejected() -> None:
    too_long = struct.pack("=I", len(EXEC) + 100) + EXEC[4:]
    too_short = struct.pack("=I", 8) + EXEC[4:]
    cn_len_lies = EXEC[: 16 + 16] + struct.pack("=H", 200) + EXEC[16 + 18 :]
    garbage = bytes(range(256)) * 3
    for data in (too_long, too_short, cn_len_lies, garbage, b""):
        assert parse_datagram(data) == []


def test_a_good_message_after_a_bad_one_in_the_same_datagram_is_not_invented() -> None:
    # A corrupt header stops the walk: nothing after it can be framed reliably.
    bad = struct.pack("=IHHII", 4, NLMSG_DONE, 0, 0, 0)
    assert parse_datagram(bad + EXEC) == []
    assert parse_datagram(EXEC + bad) == parse_datagram(EXEC)


def test_not_root_means_no_source_and_a_logged_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(proc_events.os, "geteuid", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger=proc_events.__name__):
        assert proc_events.open_event_source() is None
    assert "not running as root" in caplog.text


def test_other_platforms_mean_no_source(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(proc_events.sys, "platform", "darwin")
    with caplog.at_level(logging.WARNING, logger=proc_events.__name__):
        assert proc_events.open_event_source() is None
    assert "not Linux" in caplog.text
