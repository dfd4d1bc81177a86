"""Which system package a running process's executable came from (ProcessInfo.package).

The package index (collect.packages) answers "who owns this path". A process is given that
owner only when it really runs the file at that path: /proc/<pid>/exe (the file the process
executes, wherever it lives) must be the same inode as the path seen by the agent. That keeps
a container's /usr/bin/foo, or a process whose executable was replaced on disk by another
file, from borrowing the host package's trust. A packaged executable deleted by an upgrade
while the process runs (the kernel link reads "(deleted)") keeps its package: only the
package manager (root) can delete files under the packaged path, and in the agent's own mount
namespace the path means the same file it meant at exec time.

Optional integrity (`verify=True`): an executable whose content no longer matches the
package database's digest (dpkg md5sums) is not trusted either.
"""

from __future__ import annotations

import functools
import logging
import os

from endpoint_agent.collect.packages import DPKG_DIR, RPM_DB_DIRS, PackageIndex

logger = logging.getLogger(__name__)

_DELETED = " (deleted)"


class PackageResolver:
    def __init__(self, index: PackageIndex, *, verify: bool = False, proc_root: str = "/proc") -> None:
        self._index = index
        self._verify = verify
        self._proc = proc_root
        self._own_mnt = _readlink(os.path.join(proc_root, "self", "ns", "mnt"))

    def package_of(self, pid: int, exe: str | None) -> str | None:
        """The owning package of the file `pid` executes, or None (unowned, another file, unknown)."""
        if not exe or not exe.startswith("/"):
            return None
        path = exe.removesuffix(_DELETED)
        owner = self._index.owner(path)
        if owner is None:
            return None
        try:
            running = os.stat(os.path.join(self._proc, str(pid), "exe"))
        except OSError:
            return None  # vanished or denied: cannot tell which file it runs
        if running.st_nlink == 0:  # replaced by an upgrade since it started
            same_view = _readlink(os.path.join(self._proc, str(pid), "ns", "mnt")) == self._own_mnt
            return owner if same_view and self._own_mnt is not None else None
        try:
            on_disk = os.stat(path)
        except OSError:
            return None
        if (running.st_dev, running.st_ino) != (on_disk.st_dev, on_disk.st_ino):
            return None
        if self._verify and self._index.verify(path) is False:
            logger.warning("%s does not match the digest of package %s; not trusted", path, owner)
            return None
        return owner


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def has_package_database(root: str = "/") -> bool:
    return any(os.path.isdir(os.path.join(root, d)) for d in (DPKG_DIR, *RPM_DB_DIRS))


@functools.cache
def system_package_resolver() -> PackageResolver | None:
    """One resolver per agent process (the index is built once, refreshed when the databases
    change); None on a machine without dpkg or rpm (macOS, Windows, minimal images)."""
    if not has_package_database():
        return None
    return PackageResolver(PackageIndex())


__all__ = ["PackageResolver", "has_package_database", "system_package_resolver"]
