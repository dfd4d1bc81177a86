"""Command lines, bounded where they are collected: a local user cannot make the agent hold megabytes.

A process may carry up to a few MiB of arguments (each up to 128 KiB). The agent keeps at most
`CMDLINE_MAX_CHARS` characters of them per process (enough for every policy pattern seen in
practice), cached per process instance, stored in violations and sent to the server. What is
cut is said: the last argument kept is followed by `cut_marker(n)`, an extra argument naming
how many characters were left out, so a reader (and a policy) can tell a cut line from a short one.

    bound_cmdline(args)        any sequence of arguments (psutil's, a test's) -> bounded tuple
    read_cmdline(pid)          Linux: /proc/<pid>/cmdline read through a small fixed buffer, so the
                               full argument block is never held in memory at all

Both return the same tuple for the same arguments; collectors call one of them and nothing else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

CMDLINE_MAX_CHARS = 4096
CUT_PREFIX = "[...cmdline cut: "
_CHUNK = 64 * 1024
_ENCODING = sys.getfilesystemencoding()
_ERRORS = sys.getfilesystemencodeerrors()  # surrogateescape: undecodable bytes survive (as psutil)


def cut_marker(omitted: int) -> str:
    """The argument that stands for `omitted` characters left out."""
    return f"{CUT_PREFIX}{omitted} more characters]"


def is_cut(cmdline: Sequence[str]) -> bool:
    return bool(cmdline) and cmdline[-1].startswith(CUT_PREFIX)


def bound_cmdline(args: Sequence[str], limit: int = CMDLINE_MAX_CHARS) -> tuple[str, ...]:
    """At most `limit` characters of arguments (separators counted), then the cut marker."""
    kept: list[str] = []
    used = 0
    for i, arg in enumerate(args):
        room = limit - used
        if len(arg) <= room:
            kept.append(arg)
            used += len(arg) + 1  # the space `cmdline_str` puts between arguments
            continue
        if room > 0:
            kept.append(arg[:room])
        omitted = len(arg) - max(room, 0) + sum(len(a) + 1 for a in args[i + 1 :])
        kept.append(cut_marker(omitted))
        return tuple(kept)
    return tuple(kept)


def read_cmdline(
    pid: int, *, proc_root: str = "/proc", limit: int = CMDLINE_MAX_CHARS
) -> tuple[str, ...] | None:
    """The bounded command line of `pid` from /proc; None when it cannot be read (gone, denied).

    Reads the first bytes into a small buffer and only counts the rest (a fixed 64 KiB buffer is
    reused), so a 2 MiB argument block costs 64 KiB of memory, transiently.
    """
    try:
        fd = os.open(f"{proc_root}/{pid}/cmdline", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        # `limit` characters need at most 4*limit bytes in UTF-8; +1 tells whether there is more.
        head = os.read(fd, 4 * limit + 1)
        rest = 0
        if len(head) > 4 * limit:
            buf = bytearray(_CHUNK)
            with open(fd, "rb", buffering=0, closefd=False) as f:
                last = 0
                while n := f.readinto(buf):
                    rest += n
                    last = buf[n - 1]
                rest -= last == 0  # the terminating NUL separates nothing
    except OSError:
        return None
    finally:
        os.close(fd)
    if not head:
        return ()  # kernel thread or zombie
    bounded = bound_cmdline(_split(head.decode(_ENCODING, _ERRORS), complete=len(head) <= 4 * limit), limit)
    if rest:
        # The bytes never decoded are counted as characters: the marker says "at least this much".
        if is_cut(bounded):
            omitted = int(bounded[-1][len(CUT_PREFIX) :].split()[0]) + rest
            bounded = (*bounded[:-1], cut_marker(omitted))
        else:
            bounded = (*bounded, cut_marker(rest))
    return bounded


def _split(data: str, *, complete: bool) -> list[str]:
    """As psutil splits it: NUL-separated, or space-separated after a process rewrote its title."""
    if not complete:
        return data.split("\0")  # the tail is missing: only NULs are known to separate arguments
    sep = "\0" if data.endswith("\0") else " "
    if data.endswith(sep):
        data = data[:-1]
    parts = data.split(sep)
    if sep == "\0" and len(parts) == 1 and " " in data:
        parts = data.split(" ")
    return parts


__all__ = ["CMDLINE_MAX_CHARS", "CUT_PREFIX", "bound_cmdline", "cut_marker", "is_cut", "read_cmdline"]
