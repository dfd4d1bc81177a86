"""Give the heap memory freed after a burst of allocations back to the operating system.

The allocator keeps freed memory for reuse, so a process that once built something large
(the package index, the first full scan) keeps that RSS for good. glibc's `malloc_trim(0)`
returns the free pages; a few milliseconds, worth it only after such a burst. Elsewhere
(musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def release_free_memory() -> bool:
    """True when the C library was asked to return free memory (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


__all__ = ["release_free_memory"]
