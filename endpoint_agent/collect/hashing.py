"""SHA-256 of executables, computed once per file version.

A workstation runs a few hundred processes but only a few dozen distinct binaries, and a
binary changes rarely, so hashing every executable on every scan would dominate the scan.
`HashCache` remembers the digest of each file *version*, identified by what `stat` says
about it: (device, inode, size, mtime, ctime). mtime alone can be set back by anyone who
can write the file (`touch -d`); ctime cannot be set from user space, so a rewritten file
is always seen as new. The path is kept only to prune entries whose file is gone.

On Linux the running image is read through `/proc/<pid>/exe`: that magic link reaches the
exact inode the process executes, even when the path was deleted or replaced (an upgrade,
or malware that unlinks itself) or lives in another mount namespace (a container). Where
that link is unavailable (other OS) the resolved path is used instead.

Nothing here raises: a file that cannot be read gives `HashResult(sha256=None, error=...)`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_PRUNE_EVERY = 10
_CHUNK = 1024 * 1024
_PROC_EXE = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


@dataclass(frozen=True, slots=True)
class FileVersion:
    """One version of one file, as far as `stat` can tell."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileVersion:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class HashResult:
    sha256: str | None
    # Why there is no digest: "too large", "not a regular file", or an OS error text.
    # None when the digest is there.
    error: str | None = None
    # True when the cap, not a failure, is the reason (a partial record is not warranted).
    too_large: bool = False
    # True when the OS refused access (EACCES/EPERM).
    denied: bool = False


@dataclass(slots=True)
class HashStats:
    """Counters since the cache was created (for status output and the benchmark)."""

    hits: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    too_large: int = 0
    errors: int = 0
    pruned: int = 0


class HashCache:
    """Bounded LRU of file version -> SHA-256, shared across scans.

    `hash_process_exe` is the entry point of the collector; `hash_path` serves tests and
    tools. `end_scan` drops entries no process used recently whose file no longer exists
    as that version (so the cache does not pin digests of deleted or upgraded binaries).
    Not thread-safe: one collector owns one cache.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        prune_every: int = DEFAULT_PRUNE_EVERY,
    ) -> None:
        if max_bytes < 0 or max_entries < 1 or prune_every < 1:
            raise ValueError("max_bytes must be >= 0, max_entries and prune_every >= 1")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.prune_every = prune_every
        self.stats = HashStats()
        self._entries: OrderedDict[FileVersion, tuple[str, str]] = OrderedDict()  # -> (digest, path)
        self._used: set[FileVersion] = set()
        self._scans = 0

    def __len__(self) -> int:
        return len(self._entries)

    def hash_process_exe(self, pid: int, exe: str) -> HashResult:
        """Digest of the image process `pid` runs; `exe` is its resolved path (for other OSes)."""
        if _PROC_EXE:
            result = self._hash(f"/proc/{pid}/exe", display_path=exe)
            # EACCES on the magic link (another user's process seen by an unprivileged agent)
            # is the one case where the path is still worth a try.
            if not result.denied:
                return result
        return self._hash(exe, display_path=exe)

    def hash_path(self, path: str) -> HashResult:
        return self._hash(path, display_path=path)

    def end_scan(self) -> None:
        """Every `prune_every` scans: drop entries unused since the last pruning whose file changed.

        Not every scan: each unused entry costs a stat, and a cache full of binaries of
        programs that ran once would make that a few thousand stats per scan.
        """
        self._scans += 1
        if self._scans % self.prune_every:
            return
        unused = [version for version in self._entries if version not in self._used]
        for version in unused:
            _, path = self._entries[version]
            try:
                still_there = FileVersion.of(os.stat(path)) == version
            except (OSError, ValueError):
                still_there = False
            if not still_there:
                del self._entries[version]
                self.stats.pruned += 1
        self._used.clear()

    def _hash(self, path: str, *, display_path: str) -> HashResult:
        try:
            version = FileVersion.of(os.stat(path))
        except (OSError, ValueError) as exc:  # ValueError: NUL byte in a path
            return self._error(exc)
        cached = self._entries.get(version)
        if cached is not None:
            self._entries.move_to_end(version)
            self._used.add(version)
            self.stats.hits += 1
            return HashResult(cached[0])
        if version.size > self.max_bytes:
            self.stats.too_large += 1
            return HashResult(None, error="too large", too_large=True)
        result, opened_version = self._read_digest(path)
        if result.sha256 is not None and opened_version is not None:
            self._remember(opened_version, result.sha256, display_path)
        return result

    def _read_digest(self, path: str) -> tuple[HashResult, FileVersion | None]:
        # O_NONBLOCK: a path swapped for a FIFO must not hang the scan; it is then refused below.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        try:
            fd = os.open(path, flags)
        except (OSError, ValueError) as exc:
            return self._error(exc), None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.stats.errors += 1
                return HashResult(None, error="not a regular file"), None
            if st.st_size > self.max_bytes:
                self.stats.too_large += 1
                return HashResult(None, error="too large", too_large=True), None
            digest = hashlib.sha256()
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            total = 0
            reader = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 -- fd closed below
            while n := reader.readinto(buf):
                total += n
                if total > self.max_bytes:  # grew while we read it
                    self.stats.too_large += 1
                    return HashResult(None, error="too large", too_large=True), None
                digest.update(view[:n])
            self.stats.files_hashed += 1
            self.stats.bytes_hashed += total
            # The version is the one of the file we actually read, not of an earlier stat.
            return HashResult(digest.hexdigest()), FileVersion.of(os.fstat(fd))
        except OSError as exc:
            return self._error(exc), None
        finally:
            os.close(fd)

    def _remember(self, version: FileVersion, digest: str, path: str) -> None:
        self._entries[version] = (digest, path)
        self._entries.move_to_end(version)
        self._used.add(version)
        while len(self._entries) > self.max_entries:
            evicted, _ = self._entries.popitem(last=False)
            self._used.discard(evicted)

    def _error(self, exc: Exception) -> HashResult:
        self.stats.errors += 1
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return HashResult(None, error=text, denied=isinstance(exc, PermissionError))
