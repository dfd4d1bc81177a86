"""The single-instance lock file, safe against other local users.

`flock` works on a descriptor opened read-only, so a lock file others may read is a lock others
may hold: an unprivileged user could keep the agent from (re)starting. Hence:

* the file is opened with O_NOFOLLOW (a symlink planted at its path is never followed) and
  created 0600; an existing one that is not a regular file of ours, or that others may open, is
  replaced by a fresh one (a descriptor someone already holds keeps only the old inode);
* when the lock is busy, the holders are looked up (Linux: /proc/locks): a lock held only by
  processes of other users is not an agent of ours, so the file is replaced and locked anew.

    fd = open_lock_file(path)            # then flock(fd); on EWOULDBLOCK:
    foreign_holders(fd)                  # -> [(pid, uid), ...] of other users, or None
    fd = replace_lock_file(path)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted at the path must not hang the start


def open_lock_file(path: Path) -> int:
    """A descriptor of the lock file: a regular file of ours, mode 0600, reached without a symlink."""
    if sys.platform == "win32":
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # msvcrt locks are not shared by readers
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR, errno.EACCES, errno.EPERM):
            logger.warning("lock file %s is not a usable file (%s); replacing it", path, exc.strerror)
            return replace_lock_file(path)
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != _euid() or st.st_nlink != 1:
        os.close(fd)
        logger.warning("lock file %s is not a regular file of this user; replacing it", path)
        return replace_lock_file(path)
    if stat.S_IMODE(st.st_mode) & 0o077:
        # Others could open it, so someone may hold it already: a fresh inode is the only sure way.
        os.close(fd)
        return replace_lock_file(path)
    return fd


def replace_lock_file(path: Path) -> int:
    """Remove whatever is at `path` (not a directory) and create the lock file afresh, 0600."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a directory raises: that is for an admin to look at
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)


def foreign_holders(fd: int, *, proc_root: str = "/proc") -> list[tuple[int, int]] | None:
    """Who holds a lock on the file of `fd`: [(pid, uid)] when every holder is another user's
    process; None when a holder is ours or cannot be told (then the lock is honoured)."""
    if not hasattr(os, "major"):
        return None
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(f"{proc_root}/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    holders = []
    for line in lines:
        fields = line.split()
        if "->" in fields:
            continue  # a waiter, not a holder
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            try:
                pid = int(fields[4])
                uid = os.stat(f"{proc_root}/{pid}").st_uid
            except (ValueError, OSError):
                return None
            if pid <= 0 or uid == _euid():
                return None
            holders.append((pid, uid))
    return holders or None


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else 0


__all__ = ["foreign_holders", "open_lock_file", "replace_lock_file"]
