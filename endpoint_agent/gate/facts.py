"""What the gate learns about a file being executed, off the decision path (the judge thread).

    reader = FactsReader(hashes=True)
    facts = reader.read(fd)       # fd: a descriptor of the file (a dup of the event's)

Facts are computed once per file version (dev, ino, size, mtime, ctime: see collect/hashing.py)
and kept by the gate's table. Reading them may be slow (hashing a large file, building the package
index on first use); the gate never waits for them past its deadline.

A file that is not an ELF binary (a `#!` script, anything binfmt_misc runs) is not judged here:
its interpreter is executed next, and judged then; the script's command line is judged after exec.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from endpoint_agent.collect.hashing import HashCache
from endpoint_agent.collect.package_trust import has_package_database
from endpoint_agent.collect.packages import PackageIndex
from endpoint_agent.policy.exec_time import ExecFile

ELF_MAGIC = b"\x7fELF"
# The gate hashes larger files than the scan does: a sha256 rule must reach a 1 GiB binary.
GATE_MAX_HASH_BYTES = 4 * 1024 * 1024 * 1024
# Directories only root can change (a file there keeps its name and place unless root moves it).
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/lib32/", "/libx32/", "/opt/")


@dataclass(frozen=True, slots=True)
class FileFacts:
    file: ExecFile | None  # None: not an ELF binary (judged by its interpreter)
    # Root-owned, not writable by group or others, under a system directory: neither its content
    # nor its name can change without root, so an allow verdict may be left to the kernel.
    system_file: bool
    error: str | None = None


def package_index() -> PackageIndex | None:
    """The system's package index (built at first use), None without dpkg or rpm."""
    return PackageIndex() if has_package_database() else None


class FactsReader:
    """Not thread-safe (its hash cache): one per thread, sharing one `PackageIndex`."""

    def __init__(self, *, hashes: bool, packages: PackageIndex | None) -> None:
        self._hashes = HashCache(max_bytes=GATE_MAX_HASH_BYTES) if hashes else None
        self._packages = packages

    def warm_up_later(self) -> Callable[[], None]:
        """Build the package index now rather than at the first exec (a judge-thread `call`)."""
        if self._packages is not None:
            self._packages.owner("/")
        return lambda: None

    def read(self, fd: int) -> FileFacts:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
            head = os.pread(fd, 4, 0)
        except OSError as exc:
            return FileFacts(None, False, exc.strerror or str(exc))
        system = (
            path.startswith(SYSTEM_DIRS)
            and st.st_uid == 0
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            and _protected_hardlinks()
        )
        if head != ELF_MAGIC:
            return FileFacts(None, system)
        sha256 = None
        if self._hashes is not None:
            sha256 = self._hashes.hash_path(f"/proc/self/fd/{fd}").sha256
        return FileFacts(ExecFile(path=path, sha256=sha256, package=self.package_of(path, st)), system)

    def package_of(self, path: str, st: os.stat_result) -> str | None:
        """The package owning `path`, if the path is still the very file being executed."""
        if self._packages is None or path.endswith(" (deleted)"):
            return None
        owner = self._packages.owner(path)
        if owner is None:
            return None
        try:
            on_disk = os.stat(path)
        except OSError:
            return None
        return owner if (on_disk.st_dev, on_disk.st_ino) == (st.st_dev, st.st_ino) else None


_HARDLINKS: list[bool] = []


def _protected_hardlinks() -> bool:
    """fs.protected_hardlinks: users cannot hard-link root's files into a directory of theirs."""
    if not _HARDLINKS:
        try:
            with open("/proc/sys/fs/protected_hardlinks", encoding="ascii") as f:
                _HARDLINKS.append(f.read().strip() == "1")
        except OSError:
            _HARDLINKS.append(False)
    return _HARDLINKS[0]


__all__ = ["ELF_MAGIC", "GATE_MAX_HASH_BYTES", "FactsReader", "FileFacts"]
