"""Linux fanotify permission events for executions, through ctypes (no compiled extension).

    group = FanotifyGroup.open()                 # GateUnavailable when the kernel or privileges refuse
    group.mark_mount("/")                        # FAN_MARK_MOUNT: this mount object only
    for event in group.read():                   # non-blocking; [] when nothing is queued
        group.respond(event.fd, allow=True)      # closes the event's descriptor

Only mount marks are ever added (FAN_MARK_MOUNT): a mount belongs to one mount namespace, so a
gate started in a private namespace judges only the execs of that namespace. FAN_MARK_FILESYSTEM
(every namespace) is deliberately not offered. Ignore marks on single inodes (`ignore_inode`)
let the kernel skip files already judged harmless; `flush_ignores` drops them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from endpoint_agent.errors import AgentError

FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_CONTENT = 0x00000004
FAN_UNLIMITED_QUEUE = 0x00000010

FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_FLUSH = 0x00000080
FAN_MARK_IGNORED_MASK = 0x00000020
FAN_MARK_MOUNT = 0x00000010

FAN_OPEN_EXEC_PERM = 0x00040000
FAN_Q_OVERFLOW = 0x00004000

FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1
AT_FDCWD = -100

FANOTIFY_METADATA_VERSION = 3
_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("=iI")  # fd, response
_READ_SIZE = 64 * 1024


class GateUnavailable(AgentError):
    """fanotify permission events cannot be used here (kernel, privileges, platform)."""


@dataclass(frozen=True, slots=True)
class ExecEvent:
    fd: int  # the file being executed, opened for the gate; answer with respond(fd, ...)
    pid: int  # the exec'ing process (thread group id)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint64,
        ctypes.c_int,
        ctypes.c_char_p,
    ]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


class FanotifyGroup:
    """One fanotify group for FAN_OPEN_EXEC_PERM events; the holder must answer every event."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self._fd = fd
        self._libc = libc

    @classmethod
    def open(cls, *, nonblocking: bool = True) -> FanotifyGroup:
        if not hasattr(os, "O_LARGEFILE") and os.uname().sysname != "Linux":
            raise GateUnavailable("fanotify is Linux only")
        try:
            libc = _libc()
        except (OSError, AttributeError) as exc:
            raise GateUnavailable(f"fanotify is not available in this C library: {exc}") from exc
        flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | (FAN_NONBLOCK if nonblocking else 0)
        fd = libc.fanotify_init(flags, os.O_RDONLY | getattr(os, "O_LARGEFILE", 0) | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            why = {
                errno.EPERM: "needs CAP_SYS_ADMIN (run the agent as root)",
                errno.ENOSYS: "the kernel has no fanotify",
                errno.EINVAL: "the kernel refuses permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS)",
            }.get(err, os.strerror(err))
            raise GateUnavailable(f"fanotify_init failed: {why}")
        return cls(fd, libc)

    @property
    def fd(self) -> int:
        return self._fd

    def _mark(self, flags: int, mask: int, path: str | None) -> None:
        raw = os.fsencode(path) if path is not None else None
        if self._libc.fanotify_mark(self._fd, flags, mask, AT_FDCWD, raw) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)

    def mark_mount(self, path: str) -> None:
        """Ask for exec permission events on the mount at `path` (OSError when refused)."""
        try:
            self._mark(FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN_EXEC_PERM, path)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise GateUnavailable(
                    "the kernel does not offer FAN_OPEN_EXEC_PERM (Linux 5.0 or later needed)"
                ) from exc
            raise

    def ignore_inode(self, fd: int) -> bool:
        """Let the kernel allow later execs of this inode without asking, until it is modified."""
        try:
            self._mark(FAN_MARK_ADD | FAN_MARK_IGNORED_MASK, FAN_OPEN_EXEC_PERM, f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return True

    def flush_ignores(self) -> None:
        """Drop every inode mark (the ignore marks): the next exec of each file is asked again."""
        with contextlib.suppress(OSError):
            self._mark(FAN_MARK_FLUSH, 0, None)

    def read(self) -> list[ExecEvent]:
        """The queued events (non-blocking group: [] when none); overflow notices are skipped."""
        try:
            buf = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            # EMFILE/ENFILE: the kernel could not open the event's file for us and answered that
            # exec itself (the gate bounds its descriptors so this stays an accident).
            return []
        return list(parse_events(buf))

    def respond(self, fd: int, *, allow: bool) -> None:
        """Answer the kernel for event descriptor `fd` and close it (never raises)."""
        # ENOENT: the kernel no longer waits for it (the exec'ing task died)
        with contextlib.suppress(OSError):
            os.write(self._fd, _RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY))
        with contextlib.suppress(OSError):
            os.close(fd)

    def close(self) -> None:
        """Closing the group lets the kernel allow every exec still waiting for an answer."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            finally:
                self._fd = -1


def parse_events(buf: bytes) -> Iterator[ExecEvent]:
    offset = 0
    size = _METADATA.size
    while offset + size <= len(buf):
        event_len, vers, _, _, mask, fd, pid = _METADATA.unpack_from(buf, offset)
        if event_len < size or vers != FANOTIFY_METADATA_VERSION:
            return  # malformed: nothing after it can be trusted
        offset += event_len
        if fd == FAN_NOFD or mask & FAN_Q_OVERFLOW:
            continue
        yield ExecEvent(fd, pid)


__all__ = ["ExecEvent", "FanotifyGroup", "GateUnavailable", "parse_events"]
