"""Which mounts the gate marks: local filesystems of its mount namespace, from /proc/self/mountinfo.

Network filesystems (NFS, SMB, ...) and FUSE are left alone: an exec there is not gated (a
permission event on a network filesystem can wait on the network, and a FUSE daemon may itself
need to exec). Pseudo filesystems (proc, sysfs, cgroup, ...) hold no programs.

/proc/self/mountinfo is pollable: POLLPRI|POLLERR when the mount table changes, so mounts
added later are marked without a timer (`MountWatch`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems that hold no executables, or where a permission event must not wait.
_SKIP = frozenset(
    {
        "proc", "sysfs", "cgroup", "cgroup2", "devpts", "securityfs", "debugfs", "tracefs", "bpf",
        "pstore", "mqueue", "configfs", "fusectl", "binfmt_misc", "autofs", "efivarfs", "nsfs",
        "hugetlbfs", "rpc_pipefs", "selinuxfs", "ramfs",
        # network and FUSE (see the module docstring)
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "9p",
        "virtiofs", "sshfs", "davfs", "lustre", "gpfs", "ocfs2", "gfs2",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Mount:
    mount_id: int
    mount_point: str
    fstype: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and len(raw[i + 1 : i + 4]) == 3 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def parse_mountinfo(text: str) -> list[Mount]:
    """Every parsable line; malformed ones are skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        after = right.split()
        if not sep or len(fields) < 5 or not after:
            continue
        try:
            mount_id = int(fields[0])
        except ValueError:
            continue
        mounts.append(Mount(mount_id, _unescape(fields[4]), after[0]))
    return mounts


def is_local(mount: Mount) -> bool:
    fstype = mount.fstype
    return not (fstype in _SKIP or fstype.startswith("fuse") or fstype.startswith("nfs"))


def read_mounts(path: str = MOUNTINFO) -> list[Mount]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


class MountWatch:
    """The mount table's pollable descriptor and the local mounts not marked yet.

    `pid` None: the gate's own mount namespace. Otherwise the namespace of process `pid` (1: the
    machine's, when the service runs in a namespace of its own, as systemd's ProtectSystem= and
    PrivateTmp= make it); its mounts are reached through /proc/PID/root (`mark_path`).
    """

    def __init__(self, pid: int | None = None) -> None:
        self._path = MOUNTINFO if pid is None else f"/proc/{pid}/mountinfo"
        self._root = "" if pid is None else f"/proc/{pid}/root"
        self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self._seen: set[int] = set()

    @property
    def fd(self) -> int:
        return self._fd

    def mark_path(self, mount: Mount) -> str:
        """The path that reaches `mount` from the gate's namespace."""
        return self._root + mount.mount_point if self._root else mount.mount_point

    def new_local_mounts(self) -> list[Mount]:
        """Local mounts that appeared since the last call (all of them the first time)."""
        # Reading the file again re-arms the POLLPRI notification.
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(self._fd, 65536):
                chunks.append(chunk)
            text = b"".join(chunks).decode("utf-8", "surrogateescape")
        except OSError:
            return []
        out = []
        current = parse_mountinfo(text)
        for mount in current:
            if mount.mount_id not in self._seen and is_local(mount):
                out.append(mount)
        self._seen = {m.mount_id for m in current}
        return out


def same_namespace(pid: int) -> bool | None:
    """Whether process `pid` shares the caller's mount namespace (None: cannot tell)."""
    try:
        return os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None

    def close(self) -> None:
        os.close(self._fd)


__all__ = ["MOUNTINFO", "Mount", "MountWatch", "is_local", "parse_mountinfo", "read_mounts", "same_namespace"]
