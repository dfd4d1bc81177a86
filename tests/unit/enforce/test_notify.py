"""User notifications: always a log line, a desktop helper run in the background, rate-limited."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import psutil
import pytest

from endpoint_agent.enforce.notify import (
    DesktopNotifier,
    Notification,
    linux_command,
    macos_command,
    windows_command,
)
from endpoint_agent.types import Outcome
from tests.support.doubles import FakeClock


def note(rule: str = "p2p", user: str = "alice", **kw: object) -> Notification:
    base: dict[str, object] = {
        "username": user,
        "uid": 1000,
        "pid": 4242,
        "process_name": "qbittorrent",
        "rule_id": rule,
        "outcome": Outcome.KILLED,
        "message": "Peer-to-peer clients are not allowed <b>here</b> & now.",
        "help_url": "https://intranet.example.com/aup",
    }
    base.update(kw)
    return Notification(**base)  # type: ignore[arg-type]


def append_title_to(path: Path):  # type: ignore[no-untyped-def]
    return lambda n: ["/bin/sh", "-c", 'printf "%s\\n" "$1" >> "$0"', str(path), f"{n.rule_id}:{n.title}"]


def test_helpers_run_in_the_background_and_are_rate_limited(tmp_path: Path) -> None:
    out = tmp_path / "shown"
    clock = FakeClock()
    notifier = DesktopNotifier(clock=clock, min_interval=60, build=append_title_to(out))
    notifier.notify(note())
    notifier.notify(note())  # the same user and rule again: logged, not shown
    notifier.notify(note(rule="remote-access"))
    notifier.notify(note(user="bob"))
    clock.advance(61)
    notifier.notify(note())
    notifier.close(timeout=10)
    lines = out.read_text().splitlines()
    assert lines.count("p2p:qbittorrent was stopped") == 3  # alice twice (61 s apart), bob once
    assert lines.count("remote-access:qbittorrent was stopped") == 1
    assert notifier.suppressed == 1


def test_notify_never_waits_for_a_hanging_helper(tmp_path: Path) -> None:
    fifo, pidfile = tmp_path / "fifo", tmp_path / "pid"
    os.mkfifo(fifo)  # nobody ever writes: the helper hangs in open()
    hang = ["/bin/sh", "-c", 'echo $$ > "$0"; cat "$1" > /dev/null', str(pidfile), str(fifo)]
    notifier = DesktopNotifier(clock=FakeClock(), timeout=0.3, build=lambda n: hang)
    notifier.notify(note())  # returns at once
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    helper = int(pidfile.read_text())
    assert psutil.pid_exists(helper)  # still hanging, while notify() long returned
    notifier.close(timeout=10)  # the helper hit its timeout and was killed with its group
    assert not psutil.pid_exists(helper) or psutil.Process(helper).status() == psutil.STATUS_ZOMBIE


def test_helpers_get_a_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENDPOINT_AGENT_ENROLL_SECRET", "s3cret")
    out = tmp_path / "env"
    notifier = DesktopNotifier(clock=FakeClock(), build=lambda n: ["/bin/sh", "-c", 'env > "$0"', str(out)])
    notifier.notify(note())
    notifier.close(timeout=10)
    env = out.read_text()
    assert "PATH=" in env
    assert "s3cret" not in env


def test_always_a_local_log_line(caplog: pytest.LogCaptureFixture) -> None:
    notifier = DesktopNotifier(clock=FakeClock(), build=lambda n: None)  # no desktop to reach
    with caplog.at_level(logging.WARNING, logger="endpoint_agent.enforce.notify"):
        notifier.notify(note())
        notifier.notify(note())  # rate-limited: still logged
    notifier.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "killed qbittorrent (pid 4242, user alice) for rule p2p" in lines[0]
    assert "https://intranet.example.com/aup" in lines[0]


def runtime(tmp_path: Path, uid: int = 1000) -> Path:
    (tmp_path / str(uid)).mkdir()
    (tmp_path / str(uid) / "bus").write_text("")
    return tmp_path


def which(*present: str):  # type: ignore[no-untyped-def]
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_linux_as_root_goes_through_runuser_to_the_users_session_bus(tmp_path: Path) -> None:
    argv = linux_command(
        note(), agent_euid=0, runtime_root=runtime(tmp_path), which=which("runuser", "notify-send")
    )
    assert argv is not None
    bus = f"DBUS_SESSION_BUS_ADDRESS=unix:path={tmp_path}/1000/bus"
    assert argv[:6] == ["/usr/bin/runuser", "-u", "alice", "--", "env", bus]
    assert argv[6] == "/usr/bin/notify-send"
    assert argv[-2] == "qbittorrent was stopped"
    # the policy's text is plain text: markup is escaped, and it is one argument, never a shell string
    assert argv[-1] == (
        "Peer-to-peer clients are not allowed &lt;b&gt;here&lt;/b&gt; &amp; now.\nhttps://intranet.example.com/aup"
    )


def test_linux_same_user_needs_no_runuser_and_other_users_need_root(tmp_path: Path) -> None:
    root = runtime(tmp_path)
    argv = linux_command(note(), agent_euid=1000, runtime_root=root, which=which("notify-send"))
    assert argv is not None and argv[0] == "env"
    assert (
        linux_command(note(), agent_euid=1001, runtime_root=root, which=which("runuser", "notify-send"))
        is None
    )


def test_linux_without_a_session_bus_or_a_tool(tmp_path: Path) -> None:
    assert (
        linux_command(note(), agent_euid=0, runtime_root=tmp_path, which=which("runuser", "notify-send"))
        is None
    )
    root = runtime(tmp_path)
    assert linux_command(note(), agent_euid=0, runtime_root=root, which=which("runuser")) is None
    assert linux_command(note(username=None), agent_euid=0, runtime_root=root, which=which("runuser")) is None


def test_linux_gdbus_fallback_quotes_as_gvariant_strings(tmp_path: Path) -> None:
    argv = linux_command(
        note(message='say "hi"'),
        agent_euid=0,
        runtime_root=runtime(tmp_path),
        which=which("runuser", "gdbus"),
    )
    assert argv is not None and "/usr/bin/gdbus" in argv
    assert '"qbittorrent was stopped"' in argv
    assert '"say \\"hi\\"\\nhttps://intranet.example.com/aup"' in argv


def test_macos_and_windows_pass_the_text_as_arguments() -> None:
    mac = macos_command(note(), agent_euid=0)
    assert mac is not None
    assert mac[:6] == ["launchctl", "asuser", "1000", "sudo", "-u", "alice"]
    assert mac[-2:] == [note().title, note().body]
    assert macos_command(note(), agent_euid=1000) == mac[6:]
    assert windows_command(note(user="CORP\\alice")) == [
        "msg",
        "alice",
        "/TIME:60",
        f"{note().title}: {note().body}",
    ]
