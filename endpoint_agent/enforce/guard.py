"""Processes the agent never signals, whatever a policy says.

Protected: PID 0/1, kernel threads, the agent itself, its ancestors and its own helpers,
the init system, login/session/display managers, sshd, system daemons whose loss takes a
machine off the network, package managers, and a local list from the agent's settings.

A protected *name* is trusted only when it cannot be faked by a user:
- the basename of the resolved executable matches and that file is a system file
  (owned by root and not writable by group or others; on Windows, under %SystemRoot%), or
- the process name (comm) matches and the process runs as root (interpreted system tools such
  as unattended-upgrade run as a root-owned python), or
- nothing better is known (the executable cannot be resolved or examined): fail safe, protect.
So a torrent client copied to ~/bin/sshd, or a script that renames itself "Xorg", is not
protected; the real sshd is, even when a rule blocks `ssh*`.

`check()` decides from what a snapshot recorded; `check_live()` re-reads the process right
before a signal, because the snapshot may be seconds old.
"""

from __future__ import annotations

import fnmatch
import logging
import ntpath
import os
import posixpath
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psutil

from endpoint_agent.collect import is_kernel_thread
from endpoint_agent.collect.cmdline import bound_cmdline
from endpoint_agent.types import ProcessInfo

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

_WINDOWS = sys.platform == "win32"
_LINUX = sys.platform.startswith("linux")
_COMM_LEN = 15  # Linux truncates the process name (comm) to 15 characters

# Compared case-insensitively, without a ".exe" suffix. Globs are allowed.
SYSTEM_PROTECTED: tuple[str, ...] = (
    # init systems and service managers
    "init", "systemd", "upstart", "runit", "runsv", "runsvdir", "s6-svscan", "s6-supervise", "openrc",
    "openrc-init", "launchd", "wininit", "smss", "system", "registry", "memory compression",
    # core system daemons without which the machine is unusable or unreachable
    "systemd-journald", "systemd-udevd", "udevd", "systemd-networkd", "systemd-resolved",
    "systemd-timesyncd", "dbus-daemon", "dbus-broker", "dbus-broker-launch", "polkitd", "networkmanager",
    "wpa_supplicant", "dhclient", "dhcpcd", "auditd", "rsyslogd", "kernel_task", "configd",
    "securityd", "opendirectoryd", "coreservicesd", "mds", "notifyd", "syslogd", "services", "svchost",
    "lsass", "lsm", "csrss", "spoolsv", "fontdrvhost", "dwm", "sihost", "ctfmon",
    # login, session and display managers, compositors and shells of the desktop session
    "systemd-logind", "elogind", "login", "agetty", "getty", "gdm", "gdm3", "gdm-session-worker",
    "gdm-x-session", "gdm-wayland-session", "sddm", "sddm-helper", "sddm-greeter", "lightdm",
    "lightdm-gtk-greeter", "xdm", "lxdm", "greetd", "xorg", "x", "xwayland", "gnome-shell",
    "gnome-session-binary", "gnome-session", "kwin", "kwin_x11", "kwin_wayland", "ksmserver",
    "plasmashell", "startplasma-x11", "startplasma-wayland", "xfce4-session", "xfwm4", "mutter",
    "weston", "cinnamon-session", "mate-session", "loginwindow", "windowserver", "dock", "finder",
    "systemuiserver", "winlogon", "logonui", "explorer", "userinit",
    # remote access to the machine itself
    "sshd", "sshd-session", "sshd-auth", "sshd.exe",
    # package managers and updaters (killing them mid-transaction breaks the system)
    "apt", "apt-get", "aptitude", "apt-check", "dpkg", "dpkg-deb", "unattended-upgrade*",
    "unattended-upgr", "rpm", "rpmkeys", "dnf", "dnf-automatic", "microdnf", "yum", "zypper",
    "packagekitd", "pacman", "snapd", "snap", "flatpak", "apk", "softwareupdated",
    "softwareupdate", "installd", "installer", "system_installd", "msiexec", "trustedinstaller",
    "tiworker", "wuauclt", "musnotification", "usoclient",
)  # fmt: skip


@dataclass(frozen=True)
class Protection:
    """Why a process must not be signalled (a short phrase for logs and violation records)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class _Live:
    """What is re-read about a process right before it is signalled."""

    info: ProcessInfo
    ancestors: tuple[int, ...]


def _normalize(name: str) -> str:
    name = name.strip().lower()
    return name[:-4] if name.endswith(".exe") else name


def _basename(path: str) -> str:
    return ntpath.basename(path) if _WINDOWS else posixpath.basename(path)


class Guard:
    """Answers "may this process be signalled?"; never raises on a vanished or unreadable process."""

    def __init__(
        self,
        *,
        extra: Sequence[str] = (),
        agent_pid: int | None = None,
        system: Iterable[str] = SYSTEM_PROTECTED,
    ) -> None:
        self._agent_pid = os.getpid() if agent_pid is None else agent_pid
        self._names = tuple(_normalize(n) for n in system)
        # Local entries with a path separator are globs on the resolved executable; others are names.
        self._extra_paths = tuple(e for e in extra if "/" in e or "\\" in e)
        self._extra_names = tuple(_normalize(e) for e in extra if e not in self._extra_paths)

    @property
    def agent_pid(self) -> int:
        return self._agent_pid

    def agent_lineage(self) -> frozenset[int]:
        """The agent and its ancestors, read now (a parent may have exited and been replaced)."""
        return frozenset((self._agent_pid, *_ancestors(self._agent_pid)))

    def check(self, proc: ProcessInfo) -> Protection | None:
        """Protection from the snapshot's record (plus a live look at the agent's own lineage)."""
        return self._check(proc, lineage=self.agent_lineage(), target_ancestors=(proc.ppid,))

    def check_live(self, proc: ProcessInfo, process: psutil.Process) -> Protection | None:
        """Protection from fresh data, read from `process` (whose identity the caller verified)."""
        live = _read_live(proc, process)
        return self._check(live.info, lineage=self.agent_lineage(), target_ancestors=live.ancestors)

    def _check(
        self, proc: ProcessInfo, *, lineage: frozenset[int], target_ancestors: Sequence[int]
    ) -> Protection | None:
        if proc.pid in (0, 1) or (_WINDOWS and proc.pid == 4):
            return Protection(f"PID {proc.pid}")
        if proc.kernel_thread:
            return Protection("kernel thread")
        if proc.pid == self._agent_pid:
            return Protection("the agent itself")
        if proc.pid in lineage:
            return Protection("an ancestor of the agent")
        if self._agent_pid in target_ancestors:
            return Protection("started by the agent")
        exe = _resolved(proc.exe)
        for pattern in self._extra_paths:
            if exe is not None and _path_match(exe, pattern):
                return Protection(f"local protected path {pattern!r}")
        hit = self._name_match(proc, exe, self._names)
        if hit is not None:
            return Protection(f"system component {hit!r}")
        hit = self._name_match(proc, exe, self._extra_names)
        if hit is not None:
            return Protection(f"local protected name {hit!r}")
        return None

    # -- exec gate: the same protections for a program about to run (no process exists yet) --
    def check_program(self, path: str, st: os.stat_result, *, uid: int | None) -> Protection | None:
        """Protection for the file `path` (stat `st`) that user `uid` (None: unknown) executes.

        As for a process: a local protected path; a protected name when the file is a system file
        (root-owned, not writable by group or others), or root executes it, or the user is unknown
        (fail safe).
        """
        for pattern in self._extra_paths:
            if _path_match(path, pattern):
                return Protection(f"local protected path {pattern!r}")
        base = _normalize(_basename(path))
        system = (
            stat.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        )
        if system or uid is None or uid == 0:
            if _any_match(base, self._names):
                return Protection(f"system component {base!r}")
            if _any_match(base, self._extra_names):
                return Protection(f"local protected name {base!r}")
        return None

    def names_program(self, path: str) -> bool:
        """Whether the file's name is a protected one (whoever owns it)."""
        base = _normalize(_basename(path))
        return _any_match(base, self._names) or _any_match(base, self._extra_names)

    def _name_match(self, proc: ProcessInfo, exe: str | None, patterns: Sequence[str]) -> str | None:
        if not patterns:
            return None
        trusted = _is_system_file(proc.pid, exe) if exe is not None else None
        if exe is not None and trusted is not False:
            base = _normalize(_basename(exe))
            if _any_match(base, patterns):
                return base
        name = _normalize(proc.name)
        if name and (proc.uid == 0 or exe is None or trusted is None) and _any_match(name, patterns):
            return name
        return None


def _any_match(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return True
        # A 15-character comm may be the truncation of a longer protected name.
        if _LINUX and len(name) == _COMM_LEN and pattern.startswith(name):
            return True
    return False


def _path_match(exe: str, pattern: str) -> bool:
    if _WINDOWS:
        return fnmatch.fnmatch(exe.lower(), pattern.lower())
    return fnmatch.fnmatchcase(exe, pattern)


def _resolved(exe: str | None) -> str | None:
    if not exe:
        return None
    try:
        return os.path.realpath(exe)
    except (OSError, ValueError):
        return exe


def _is_system_file(pid: int, exe: str) -> bool | None:
    """Whether the running executable is a file no unprivileged user could have written; None: unknown."""
    if _WINDOWS:
        root = os.environ.get("SYSTEMROOT", r"C:\Windows").lower().rstrip("\\") + "\\"
        return exe.lower().startswith(root)
    st = None
    if _LINUX:
        # The inode actually running, even if the path was replaced or deleted since.
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            st = None
    if st is None:
        try:
            st = os.stat(exe)
        except OSError:
            return None
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _ancestors(pid: int) -> tuple[int, ...]:
    try:
        return tuple(p.pid for p in psutil.Process(pid).parents())
    except (psutil.Error, OSError):
        return ()


def _read_live(proc: ProcessInfo, process: psutil.Process) -> _Live:
    """Fresh attributes; whatever cannot be read falls back to the snapshot's value."""
    try:
        with process.oneshot():
            name = _safe(process.name, proc.name)
            exe = _safe(process.exe, proc.exe) or None
            cmdline = bound_cmdline(_safe(process.cmdline, list(proc.cmdline)))
            uids = _safe(process.uids, None) if hasattr(process, "uids") else None
            ppid = _safe(process.ppid, proc.ppid)
        ancestors = tuple(p.pid for p in process.parents())
    except (psutil.Error, OSError):
        return _Live(proc, (proc.ppid,))
    info = ProcessInfo(
        pid=proc.pid,
        ppid=ppid,
        name=name,
        exe=exe,
        cmdline=cmdline,
        username=proc.username,
        uid=uids.real if uids is not None else proc.uid,
        create_time=proc.create_time,
        kernel_thread=proc.kernel_thread or is_kernel_thread(proc.pid, ppid, exe, cmdline),
    )
    return _Live(info, ancestors)


def _safe(getter: Callable[[], _T], default: _T) -> _T:
    try:
        return getter()
    except psutil.AccessDenied:
        return default


__all__ = ["SYSTEM_PROTECTED", "Guard", "Protection"]
