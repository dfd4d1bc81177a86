"""The instance lock file: 0600, never through a symlink, never a file someone else may hold."""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from pathlib import Path

import pytest

from endpoint_agent.daemon import AlreadyRunning, InstanceLock
from endpoint_agent.lockfile import foreign_holders, open_lock_file

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and flock")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_created_private(tmp_path: Path) -> None:
    fd = open_lock_file(tmp_path / "agent.lock")
    os.close(fd)
    assert mode(tmp_path / "agent.lock") == 0o600


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    target.chmod(0o644)
    (tmp_path / "agent.lock").symlink_to(target)
    lock = InstanceLock(tmp_path / "agent.lock")
    lock.acquire()
    try:
        assert not (tmp_path / "agent.lock").is_symlink() and mode(tmp_path / "agent.lock") == 0o600
        assert target.read_text() == "keep me\n" and mode(target) == 0o644
    finally:
        lock.release()


def test_a_file_others_could_open_is_replaced_by_a_fresh_inode(tmp_path: Path) -> None:
    path = tmp_path / "agent.lock"
    path.write_text("123\n")
    path.chmod(0o644)  # as older agents left it: readable, so lockable, by anyone
    held = os.open(path, os.O_RDONLY)  # what another user may have opened (and flock'ed) already
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fd = open_lock_file(path)
        try:
            assert os.fstat(fd).st_ino != os.fstat(held).st_ino and mode(path) == 0o600
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the fresh file is free
        finally:
            os.close(fd)
    finally:
        os.close(held)


def test_a_fifo_at_the_path_does_not_hang_the_start(tmp_path: Path) -> None:
    path = tmp_path / "agent.lock"
    os.mkfifo(path)
    os.close(open_lock_file(path))
    assert stat.S_ISREG(path.lstat().st_mode)


def test_a_lock_held_by_this_user_is_an_agent_already_running(tmp_path: Path) -> None:
    path = tmp_path / "agent.lock"
    first = InstanceLock(path)
    first.acquire()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert foreign_holders(fd) is None  # ours: honoured
        finally:
            os.close(fd)
        with pytest.raises(AlreadyRunning, match="already running"):
            InstanceLock(path).acquire()
    finally:
        first.release()
