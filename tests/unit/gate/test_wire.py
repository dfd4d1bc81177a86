"""The gate's byte-level edges: fanotify event records, mountinfo, the agent<->gate messages."""

from __future__ import annotations

import struct

from endpoint_agent.gate.fanotify import FAN_OPEN_EXEC_PERM, FAN_Q_OVERFLOW, ExecEvent, parse_events
from endpoint_agent.gate.mounts import Mount, is_local, parse_mountinfo
from endpoint_agent.gate.protocol import GateConfig, Report, decode, encode
from endpoint_agent.gate.reports import violation_of
from endpoint_agent.types import Outcome


def record(fd: int, pid: int, mask: int = FAN_OPEN_EXEC_PERM, vers: int = 3) -> bytes:
    return struct.pack("=IBBHQii", 24, vers, 0, 24, mask, fd, pid)


def test_events_are_parsed_and_overflow_or_garbage_is_skipped() -> None:
    buf = record(7, 100) + record(-1, 0, FAN_Q_OVERFLOW) + record(8, 101)
    assert list(parse_events(buf)) == [ExecEvent(7, 100), ExecEvent(8, 101)]
    assert list(parse_events(record(9, 1, vers=99))) == []
    assert list(parse_events(b"\x00" * 10)) == []


MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "23 22 0:5 / /proc rw - proc proc rw\n"
    "24 22 0:40 / /mnt/with\\040space rw - tmpfs none rw\n"
    "25 22 0:41 / /net rw - nfs4 srv:/x rw\n"
    "26 22 0:42 / /home/ann/fuse rw - fuse.sshfs x rw\n"
    "garbage line\n"
)


def test_mountinfo_keeps_local_filesystems_only() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert Mount(24, "/mnt/with space", "tmpfs") in mounts
    assert [m.mount_point for m in mounts if is_local(m)] == ["/", "/mnt/with space"]


def test_messages_round_trip_and_bad_ones_are_refused() -> None:
    config = GateConfig(policy={"name": "p", "version": 2}, agent_pid=5, enforce=True, protected_extra=("x",))
    assert GateConfig.from_json(config.to_json()) == config
    report = Report(
        "denied", "r", "p2p", "why", "msg", None, 9, 1000, "ann", "/tmp/t", None, [["name", "t", "t"]], 2
    )
    assert Report.from_message(decode(encode(report.to_message())) or {}) == report
    assert decode(b"\xff\xfe") is None and decode(b"[1]") is None and decode(b'{"op": 3}') is None


def test_a_denial_report_becomes_a_denied_violation() -> None:
    report = Report(
        "denied", "no-tool", "p2p", "process name 'tool' matched 'tool'", "Not allowed.", None, 4242, 1000,
        "ann", "/tmp/x/tool", "ab" * 32, [["name", "tool", "tool"]], 7, 1.7e9,
    )  # fmt: skip
    v, _ = violation_of(report)
    data = v.to_json()
    assert v.action is Outcome.DENIED and data["action"] == "denied" and data["rule_id"] == "no-tool"
    assert data["exe"] == "/tmp/x/tool" and data["process_name"] == "tool" and data["username"] == "ann"
    assert data["policy_version"] == 7 and data["sha256"] == "ab" * 32
