"""Which installed package owns a file, and whether the file still matches the package.

Why: "this binary came from a distribution package" is strong evidence that it is approved
software; a copy of the same binary in ~/Downloads is not. The package manager already
knows: dpkg lists every installed path in /var/lib/dpkg/info/<pkg>.list (and a checksum in
<pkg>.md5sums); rpm answers `rpm -qa` with a query format.

Paths are compared in a canonical form: every directory component resolved (symlinks inside
`root`), the last component kept. That makes merged-/usr work both ways: dpkg lists /bin/ls
while the kernel reports /usr/bin/ls, and a package listing /usr/bin/foo owns /bin/foo.
dpkg diversions (/var/lib/dpkg/diversions) are applied: a diverted file belongs to the
package that diverted it, and the original package's copy to the diverted-to path.
Directories are dropped from the index (any listed path with children), since many
packages "own" /usr/bin.

Integrity: dpkg records MD5 (not SHA-256) per file and no size, so there is no cheap size
pre-check; a verdict is cached by the file's identity (path, device, inode, size, mtime,
ctime) so a file is hashed once until it changes. No verdict (None) for files dpkg keeps
no checksum for (conffiles, symlinks) and for rpm-owned files.

Building the index takes about 0.13 s on a Debian 12 machine with 723 packages (122,000
listed paths, 100,000 files indexed); loading the same index from a JSON cache takes about
0.07 s. The gain is not worth an on-disk cache, which would add a trust problem (whoever can
write it can make any binary look packaged), so the index is kept in memory only.
The package databases' mtimes are checked at most every `check_interval` seconds (injected
clock) and the index is rebuilt when they changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass

from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.collect.heap import release_free_memory
from endpoint_agent.collect.path_table import PathRemovals, PathTable, PathTableBuilder

logger = logging.getLogger(__name__)

DPKG_DIR = "var/lib/dpkg"
RPM_DB_DIRS = ("var/lib/rpm", "usr/lib/sysimage/rpm")
RPM_QUERY_FORMAT = "[%{FILENAMES}\t%{=NAME}\n]"
_MAX_SYMLINK_DEPTH = 40
_MAX_VERIFY_CACHE = 8192


@dataclass(frozen=True, slots=True)
class _Diversion:
    to: str
    by: str  # the diverting package, ":" for a local (admin) diversion


class PackageIndex:
    """path -> owning package, built lazily from dpkg (and rpm where present), refreshed on change."""

    def __init__(
        self,
        root: str = "/",
        *,
        check_interval: float = 60.0,
        clock: Clock | None = None,
        rpm_path: str | None = None,
        use_rpm: bool = True,
    ) -> None:
        self._root = os.path.realpath(root)
        self._prefix = "" if self._root == "/" else self._root
        self._check_interval = check_interval
        self._clock = clock or SystemClock()
        self._rpm = (rpm_path or shutil.which("rpm")) if use_rpm else None
        self._lock = threading.RLock()
        self._owners: PathTable = PathTableBuilder().build()  # ~12 bytes per path, not ~200
        self._list_names: dict[str, str] = {}  # package -> dpkg info file stem ("libc6:amd64")
        self._diversions: dict[str, _Diversion] = {}
        self._md5: dict[str, dict[str, str]] = {}  # package -> canonical path -> md5, loaded lazily
        self._verified: dict[tuple[str, int, int, int, int, int], bool] = {}
        self._dirs: dict[str, str] = {}  # directory -> resolved, for package paths (one build)
        self._listed_dirs: dict[str, str] = {}  # the same, only for directories that hold listed files
        self._stamp: tuple[int, ...] | None = None
        self._checked_at: float | None = None

    # -- public -------------------------------------------------------------------------------

    def owner(self, path: str) -> str | None:
        """The package that installed `path` (absolute, as seen inside root), or None."""
        if not path.startswith("/"):
            return None
        with self._lock:
            self._maybe_refresh()
            return self._owners.get(self._canonical(path, {"": ""}))

    def verify(self, path: str) -> bool | None:
        """True: content matches dpkg's MD5; False: modified; None: no record or unreadable."""
        if not path.startswith("/"):
            return None
        with self._lock:
            self._maybe_refresh()
            canon = self._canonical(path, {"": ""})
            package = self._owners.get(canon)
            if package is None or package not in self._list_names:
                return None
            expected = self._md5sums(package).get(canon)
            if expected is None:
                return None
            return self._check_md5(canon, expected)

    def refresh(self, *, force: bool = False) -> bool:
        """Rebuild if the package databases changed (or `force`); True when it rebuilt."""
        with self._lock:
            self._checked_at = self._clock.monotonic()
            stamp = self._db_stamp()
            if not force and stamp == self._stamp:
                return False
            started = time.perf_counter()
            self._build()
            self._stamp = stamp
            logger.info("package index: %d paths in %.2fs", len(self._owners), time.perf_counter() - started)
            return True

    def __len__(self) -> int:
        with self._lock:
            self._maybe_refresh()
            return len(self._owners)

    # -- building -----------------------------------------------------------------------------

    def _maybe_refresh(self) -> None:
        if self._checked_at is None or self._clock.monotonic() - self._checked_at >= self._check_interval:
            self.refresh()

    def _db_stamp(self) -> tuple[int, ...]:
        paths = [
            os.path.join(self._root, DPKG_DIR, "status"),
            os.path.join(self._root, DPKG_DIR, "info"),
            os.path.join(self._root, DPKG_DIR, "diversions"),
        ]
        if self._rpm is not None:
            for db in RPM_DB_DIRS:
                base = os.path.join(self._root, db)
                paths.append(base)
                with contextlib.suppress(OSError):
                    paths.extend(os.path.join(base, name) for name in sorted(os.listdir(base)))
        return tuple(_mtime_ns(p) for p in paths)

    def _build(self) -> None:
        self._dirs = {"": ""}
        self._listed_dirs = {}
        self._md5 = {}
        self._verified = {}
        self._diversions = self._read_diversions()
        owners = PathTableBuilder()  # flat arrays while fed, so the build leaves no heap behind
        parents = owners.removed
        self._list_names = {}
        info = os.path.join(self._root, DPKG_DIR, "info")
        try:
            names = sorted(os.listdir(info))
        except OSError:
            names = []
        for name in names:
            if not name.endswith(".list"):
                continue
            stem = name[: -len(".list")]
            package = stem.partition(":")[0]
            self._list_names[package] = stem
            for listed in _read_lines(os.path.join(info, name)):
                self._add(owners, parents, self._divert(listed, package), package)
        if self._rpm is not None:
            for listed, package in self._rpm_files():
                self._add(owners, parents, listed, package)
        self._owners = owners.build()  # without the directories (`parents`)
        self._dirs = {"": ""}  # build-time caches: dropped, and their memory given back
        self._listed_dirs = {}
        release_free_memory()

    def _add(self, owners: PathTableBuilder, parents: PathRemovals, listed: str, package: str) -> None:
        directory, _, name = listed.rpartition("/")
        if not listed.startswith("/") or name in ("", ".", "..") or "/." in directory or "//" in directory:
            if listed.startswith("/") and listed != "/." and not listed.endswith("/"):
                canon = self._canonical(listed, self._dirs)  # unusual spelling: the general path
                owners.setdefault(canon, package)
                parents.add(canon.rpartition("/")[0])
            return
        resolved = self._listed_dirs.get(directory)
        if resolved is None:  # first file in this directory: remember both forms of it as directories
            resolved = self._listed_dirs[directory] = self._resolve_dir(directory, self._dirs)
            parents.add(resolved)
            # The parent as listed too: /bin, when the package listed /bin/ls and /bin is a symlink.
            parents.add(self._canonical(directory or "/", self._dirs))
        owners.setdefault(resolved + "/" + name, package)

    def _read_diversions(self) -> dict[str, _Diversion]:
        lines = _read_lines(os.path.join(self._root, DPKG_DIR, "diversions"))
        return {lines[i]: _Diversion(to=lines[i + 1], by=lines[i + 2]) for i in range(0, len(lines) - 2, 3)}

    def _divert(self, listed: str, package: str) -> str:
        diversion = self._diversions.get(listed)
        if diversion is None or diversion.by == package:
            return listed
        return diversion.to  # the diverted package's copy lives at the diverted-to path

    def _rpm_files(self) -> list[tuple[str, str]]:
        assert self._rpm is not None
        argv = [self._rpm, "-qa", "--qf", RPM_QUERY_FORMAT]
        if self._prefix:
            argv[1:1] = ["--root", self._root]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="surrogateescape",
                timeout=120,
                check=True,
                env={"LC_ALL": "C", "PATH": os.defpath},
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("package index: rpm query failed, rpm files left out: %s", exc)
            return []
        out: list[tuple[str, str]] = []
        for line in done.stdout.splitlines():
            path, sep, package = line.partition("\t")
            if sep and path.startswith("/") and package and package != "(none)":
                out.append((path, package))
        return out

    # -- paths --------------------------------------------------------------------------------

    def _canonical(self, path: str, cache: dict[str, str]) -> str:
        """`path` with its directory resolved. Package paths share one cache per build (system
        directories); a query gets a fresh one, so a user-owned directory that was a symlink
        once can never lend a later, different file a package's identity."""
        parts = _parts(path)
        if not parts or parts[-1] == "..":
            return self._resolve_dir(_join(parts), cache) or "/"
        return self._resolve_dir(_join(parts[:-1]), cache) + "/" + parts[-1]

    def _resolve_dir(self, directory: str, cache: dict[str, str], depth: int = 0) -> str:
        """`directory` ("" is root) with every symlink resolved inside root, ".." after resolving."""
        known = cache.get(directory)
        if known is not None:
            return known
        parent, _, name = directory.rpartition("/")
        base = self._resolve_dir(parent, cache, depth)
        if name == "..":
            resolved = base.rpartition("/")[0]
        else:
            candidate = base + "/" + name
            try:
                target = os.readlink(self._prefix + candidate)
            except OSError:  # not a symlink, or missing: taken literally
                resolved = candidate
            else:
                if depth >= _MAX_SYMLINK_DEPTH:
                    return candidate  # a loop; do not cache
                full = target if target.startswith("/") else base + "/" + target
                resolved = self._resolve_dir(_join(_parts(full)), cache, depth + 1)
        cache[directory] = resolved
        return resolved

    # -- integrity ----------------------------------------------------------------------------

    def _md5sums(self, package: str) -> dict[str, str]:
        sums = self._md5.get(package)
        if sums is None:
            sums = {}
            stem = self._list_names[package]
            for line in _read_lines(os.path.join(self._root, DPKG_DIR, "info", stem + ".md5sums")):
                digest, _, relative = line.partition("  ")
                if len(digest) == 32 and relative:
                    sums[self._canonical(self._divert("/" + relative, package), self._dirs)] = digest.lower()
            self._md5[package] = sums
        return sums

    def _check_md5(self, canon: str, expected: str) -> bool | None:
        try:
            fd = os.open(self._prefix + canon, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        with open(fd, "rb", closefd=True) as fh:
            try:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return False  # dpkg recorded a regular file here
                key = (canon, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                cached = self._verified.get(key)
                if cached is not None:
                    return cached
                digest = hashlib.md5(usedforsecurity=False)
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            except OSError:
                return None
        verdict = digest.hexdigest() == expected
        if len(self._verified) >= _MAX_VERIFY_CACHE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[key] = verdict
        return verdict


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _join(parts: list[str]) -> str:
    """Absolute path of `parts` in _resolve_dir's form: "" for the root, no trailing slash."""
    return "".join("/" + part for part in parts)


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read().splitlines()
    except OSError:
        return []
