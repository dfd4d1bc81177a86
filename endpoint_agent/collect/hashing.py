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

`BudgetedHasher` is how the service hashes: a file seen before is answered from the cache; a
new one is read at once only while it is small and a byte-per-second budget allows, else it is
queued for a background thread that reads at that budget, the smallest file first. So a local
user who runs 40 sparse 500 MiB executables costs a bounded share of one core and never holds
up a scan (their processes carry `sha256=None` until their turn comes). One queue entry per
file identity (device, inode): a file rewritten over and over keeps one place, and after
REHASH_LIMIT versions in REHASH_WINDOW it is deferred -- judged by its identity (path, name)
rather than hashed again.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import stat
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_PRUNE_EVERY = 10
_CHUNK = 1024 * 1024
# The service's hashing budget (BudgetedHasher): what it may read per second, in the background.
DEFAULT_RATE = 32 * 1024 * 1024
INLINE_BYTES = 4 * 1024 * 1024  # files up to this are hashed at once while the budget lasts
MAX_QUEUED = 128
REHASH_LIMIT = 3  # versions of one file (device, inode) hashed per REHASH_WINDOW, then deferred
REHASH_WINDOW = 3600.0
Pace = Callable[[int], None]
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
    # True when the digest will come later (queued behind the byte budget, or deferred because
    # the file keeps being rewritten): ask again on a later scan; the record is not incomplete.
    pending: bool = False


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

    def cached(self, version: FileVersion) -> str | None:
        """The digest of this file version if known; nothing is read."""
        entry = self._entries.get(version)
        if entry is None:
            return None
        self._entries.move_to_end(version)
        self._used.add(version)
        self.stats.hits += 1
        return entry[0]

    def read(
        self, path: str, version: FileVersion, *, display_path: str, pace: Pace | None = None
    ) -> HashResult:
        """Hash `path` now (it must still be `version`), reading at the pace `pace` allows."""
        result, opened = self._read_digest(path, pace=pace)
        if opened is not None and opened != version:
            return HashResult(None, error="changed while queued", pending=True)
        if result.sha256 is not None and opened is not None:
            self._remember(opened, result.sha256, display_path)
        return result

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

    def _read_digest(self, path: str, *, pace: Pace | None = None) -> tuple[HashResult, FileVersion | None]:
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
                if pace is not None:
                    pace(n)  # the byte budget: may sleep (background hashing only)
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


@dataclass(order=True)
class _Job:
    size: int
    seq: int
    path: str = field(compare=False)
    display: str = field(compare=False)
    version: FileVersion = field(compare=False)


class TokenBucket:
    """`rate` bytes per second, up to one second's worth saved; the clock is passed in."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def try_take(self, n: int) -> bool:
        self._refill()
        if n > self._tokens:
            return False
        self._tokens -= n
        return True

    def debt(self, n: int) -> float:
        """Take `n` (possibly going negative); how long to wait before the next read."""
        self._refill()
        self._tokens -= n
        return max(0.0, -self._tokens / self.rate)


class BudgetedHasher:
    """Digests for the collector without ever blocking it on a big file (see the module docstring).

    Thread-safe: the collector calls `digest`, the worker thread hashes queued files.
    """

    def __init__(
        self,
        cache: HashCache | None = None,
        *,
        rate: float = DEFAULT_RATE,
        inline_bytes: int = INLINE_BYTES,
        max_queued: int = MAX_QUEUED,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or max_queued < 1:
            raise ValueError("rate must be > 0 and max_queued >= 1")
        self.cache = cache or HashCache()
        self._bucket = TokenBucket(rate, clock=clock)
        self._inline = inline_bytes
        self._max_queued = max_queued
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[_Job] = []
        self._queued: dict[tuple[int, int], _Job] = {}  # (dev, ino) -> its one job
        self._hashed: OrderedDict[tuple[int, int], deque[float]] = OrderedDict()  # when versions were read
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.queued_total = 0
        self.dropped = 0  # queue full: asked again on a later scan
        self.deferred = 0  # rewritten too often

    @property
    def stats(self) -> HashStats:
        return self.cache.stats

    def end_scan(self) -> None:
        with self._lock:
            self.cache.end_scan()

    def queue_length(self) -> int:
        with self._lock:
            return len(self._queued)

    def status(self) -> dict[str, object]:
        with self._lock:
            stats = self.cache.stats
            return {
                "queued": len(self._queued),
                "queued_total": self.queued_total,
                "deferred": self.deferred,
                "queue_full": self.dropped,
                "files_hashed": stats.files_hashed,
                "bytes_hashed": stats.bytes_hashed,
                "rate_bytes_per_second": self._bucket.rate,
            }

    def digest(self, pid: int, exe: str) -> HashResult:
        """Never reads more than `inline_bytes` here; a bigger or over-budget file is queued."""
        path = f"/proc/{pid}/exe" if _PROC_EXE else exe
        try:
            version = FileVersion.of(os.stat(path))
        except (OSError, ValueError) as exc:
            if _PROC_EXE and isinstance(exc, PermissionError):
                path = exe  # another user's process, seen unprivileged: the path is still worth a try
                try:
                    version = FileVersion.of(os.stat(path))
                except (OSError, ValueError) as again:
                    return self.cache._error(again)
            else:
                return self.cache._error(exc)
        with self._lock:
            known = self.cache.cached(version)
            if known is not None:
                return HashResult(known)
            if version.size > self.cache.max_bytes:
                self.cache.stats.too_large += 1
                return HashResult(None, error="too large", too_large=True)
            identity = (version.dev, version.ino)
            if self._rewritten_too_often(identity):
                self.deferred += 1
                return HashResult(None, error="rewritten too often: judged by path and name", pending=True)
            inline = version.size <= self._inline and identity not in self._queued
            if inline and self._bucket.try_take(version.size):
                self._note_hashed(identity)
                return self.cache.read(path, version, display_path=exe)
            return self._enqueue(path, exe, version, identity)

    def enqueue_path(self, path: str) -> HashResult:
        """Queue `path` for the background thread (tools and tests; the collector uses `digest`)."""
        version = FileVersion.of(os.stat(path))
        with self._lock:
            return self._enqueue(path, path, version, (version.dev, version.ino))

    def hash_process_exe(self, pid: int, exe: str) -> HashResult:
        """HashCache's entry point, answered without ever blocking on a big file."""
        return self.digest(pid, exe)

    def _enqueue(self, path: str, exe: str, version: FileVersion, identity: tuple[int, int]) -> HashResult:
        old = self._queued.get(identity)
        if old is not None and old.version == version:
            return HashResult(None, error="queued", pending=True)
        if old is None and len(self._queued) >= self._max_queued:
            self.dropped += 1
            return HashResult(None, error="hash queue full", pending=True)
        self._seq += 1
        # A path that stays valid: /proc/<pid>/exe dies with the process, the executable's path
        # may be replaced (the version check at reading time catches that).
        job = _Job(version.size, self._seq, exe if path.startswith("/proc/") else path, exe, version)
        self._queued[identity] = job  # a newer version of the same file takes its place
        heapq.heappush(self._heap, job)
        self.queued_total += 1
        self._wake.notify()
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._work, name="hasher", daemon=True)
            self._thread.start()
        return HashResult(None, error="queued", pending=True)

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                job = self._next_job()
                if job is None:
                    return
            try:
                # Read without the lock (the collector must not wait), remember under it.
                result, opened = self.cache._read_digest(job.path, pace=self._pace)
                with self._lock:
                    if result.sha256 is not None and opened == job.version:
                        self.cache._remember(opened, result.sha256, job.display)
            except Exception:  # a worker never dies of one file
                logger.exception("hashing %s failed", job.display)

    def _next_job(self) -> _Job | None:
        while True:
            while self._heap:
                job = heapq.heappop(self._heap)
                identity = (job.version.dev, job.version.ino)
                if self._queued.get(identity) is job:  # else superseded by a newer version
                    del self._queued[identity]
                    self._note_hashed(identity)
                    return job
            if self._closed:
                return None
            self._wake.wait()

    def _pace(self, n: int) -> None:
        with self._lock:
            wait = self._bucket.debt(n)
        if wait > 0:
            self._sleep(wait)

    def _rewritten_too_often(self, identity: tuple[int, int]) -> bool:
        times = self._hashed.get(identity)
        if times is None:
            return False
        cutoff = self._clock() - REHASH_WINDOW
        while times and times[0] < cutoff:
            times.popleft()
        return len(times) >= REHASH_LIMIT

    def _note_hashed(self, identity: tuple[int, int]) -> None:
        times = self._hashed.setdefault(identity, deque(maxlen=REHASH_LIMIT))
        times.append(self._clock())
        self._hashed.move_to_end(identity)
        while len(self._hashed) > self.cache.max_entries:
            self._hashed.popitem(last=False)
