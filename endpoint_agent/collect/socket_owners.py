"""Which processes hold which sockets, without reading every file descriptor on every scan.

The kernel's socket tables (/proc/<pid>/net/*) name each socket's inode but not its owner;
the owner is found by reading the /proc/<pid>/fd links of processes. Doing that for every
process on every scan (what psutil does) costs a readlink per open file descriptor on the
machine. `SocketOwners` keeps, per process instance, the socket inodes it held when its fds
were last read, and reads fds again only where that can have changed:

* a process it has not seen (new, or a PID reused by a new instance): always;
* a socket inode the tables show that no known process holds: processes are searched, most
  likely first -- those of the socket's network namespace, those whose number of open fds
  changed since their last walk (`st_size` of /proc/<pid>/fd, Linux >= 6.2), those of the
  socket's owning uid -- until every such inode is found;
* every `rewalk_every` scans: all processes, so an fd passed over a unix socket, or a copy of
  a shared socket that one holder closed, cannot stay misattributed for long. While process
  events keep the process set current, the caller passes `rewalk` instead: a slice of the
  processes to read on every scan, so the same coverage never costs one big scan; and the
  search for an unknown socket's owner stops at the processes whose number of fds changed
  (a socket that appeared without that, or was closed before it was found, waits for its
  holder's slice instead of a walk of every process on every scan), and it looks first at the
  processes that held sockets at their last walk, so a new connection of a process that had
  some is found without looking at every process that holds none.

Inodes that no process holds (kernel sockets, or a holder the agent may not inspect) are
remembered as ownerless while they stay in the tables, so they are not searched for again
on every scan.

Not thread-safe: the collector that owns it serialises access.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from endpoint_agent.collect.proc_net import SocketRecord, socket_inodes_of

DEFAULT_REWALK_EVERY = 10


@dataclass(slots=True)
class _Walked:
    start_ticks: int
    inodes: frozenset[int]
    fd_count: int  # st_size of /proc/<pid>/fd when walked; 0 where the kernel does not say


@dataclass(slots=True)
class OwnerStats:
    walks: int = 0  # fd directories read
    searches: int = 0  # scans that had to look for the owner of an unknown socket
    full_walks: int = 0


class SocketOwners:
    def __init__(self, *, rewalk_every: int = DEFAULT_REWALK_EVERY, proc_root: str = "/proc") -> None:
        if rewalk_every < 1:
            raise ValueError("rewalk_every must be >= 1")
        self._proc = proc_root
        self._rewalk_every = rewalk_every
        self._walked: dict[int, _Walked] = {}
        self._ownerless: set[int] = set()
        self._scans = 0
        self.stats = OwnerStats()

    def __len__(self) -> int:
        return len(self._walked)

    def known(self, pid: int) -> frozenset[int] | None:
        """The socket inodes `pid` held at its last walk (None: never walked)."""
        walked = self._walked.get(pid)
        return None if walked is None else walked.inodes

    def forget(self, pid: int) -> None:
        self._walked.pop(pid, None)

    def walk(self, pid: int, start_ticks: int) -> frozenset[int]:
        """Read the fds of `pid` now and remember its socket inodes."""
        fd_count = self._fd_count(pid)
        inodes = frozenset(socket_inodes_of(pid, proc_root=self._proc))
        self._walked[pid] = _Walked(start_ticks, inodes, fd_count)
        self.stats.walks += 1
        return inodes

    def resolve(
        self,
        live: Mapping[int, int],
        namespaces: Sequence[tuple[Sequence[int], Sequence[SocketRecord]]],
        uids: Mapping[int, int | None],
        *,
        rewalk: Collection[int] | None = None,
    ) -> dict[int, list[int]]:
        """inode -> PIDs holding it (ascending), for the sockets of one full scan.

        `live`: pid -> start_ticks of every process the scan saw; `namespaces`: per network
        namespace, its member PIDs and its socket records; `uids`: pid -> real uid (a hint);
        `rewalk`: this scan's slice of processes to read again (None: all of them every
        `rewalk_every` scans).
        """
        self._scans += 1
        for pid in [p for p, w in self._walked.items() if live.get(p) != w.start_ticks]:
            del self._walked[pid]  # exited, or the PID now belongs to another instance
        full = rewalk is None and self._scans % self._rewalk_every == 0
        if full:
            self.stats.full_walks += 1
        again = rewalk if rewalk is not None else ()
        for pid, start in live.items():
            if full or pid not in self._walked or pid in again:
                self.walk(pid, start)
        owners = self._owner_map()
        present: set[int] = set()
        for members, records in namespaces:
            inodes = {r.inode for r in records if r.inode}
            present |= inodes
            unknown = {i for i in inodes if i not in owners and i not in self._ownerless}
            if unknown:
                self.stats.searches += 1
                self._search(unknown, members, records, live, uids, owners, everyone=rewalk is None)
        self._ownerless &= present
        for holders in owners.values():
            holders.sort()
        return owners

    def _owner_map(self) -> dict[int, list[int]]:
        owners: dict[int, list[int]] = {}
        for pid, walked in self._walked.items():
            for inode in walked.inodes:
                owners.setdefault(inode, []).append(pid)
        return owners

    def _search(
        self,
        unknown: set[int],
        members: Iterable[int],
        records: Sequence[SocketRecord],
        live: Mapping[int, int],
        uids: Mapping[int, int | None],
        owners: dict[int, list[int]],
        *,
        everyone: bool = True,
    ) -> None:
        socket_uids = {r.uid for r in records if r.inode in unknown}
        inside = set(members)
        if not everyone:
            self._search_changed(unknown, inside, socket_uids, live, uids, owners)
            return
        candidates = []
        # Every process, most likely first: in the socket's namespace (a socket can be passed to a
        # process elsewhere), with a changed number of fds, of the socket's owner.
        for pid, walked in self._walked.items():
            if pid not in live:
                continue
            fds_changed = walked.fd_count == 0 or self._fd_count(pid) != walked.fd_count
            candidates.append((pid not in inside, not fds_changed, uids.get(pid) not in socket_uids, pid))
        candidates.sort()
        for *_, pid in candidates:
            if self._take(pid, live[pid], unknown, owners):
                return
        self._ownerless |= unknown

    def _search_changed(
        self,
        unknown: set[int],
        inside: set[int],
        socket_uids: set[int],
        live: Mapping[int, int],
        uids: Mapping[int, int | None],
        owners: dict[int, list[int]],
    ) -> None:
        """Among processes whose fds changed: those that held sockets first, each checked only when
        reached, so a new socket of a process that had some costs no look at every process."""
        holders: list[int] = []
        others: list[int] = []
        for pid, walked in self._walked.items():
            if pid in live:
                (holders if walked.inodes else others).append(pid)
        for group in (holders, others):
            group.sort(key=lambda p: (p not in inside, uids.get(p) not in socket_uids, p))
            for pid in group:
                walked = self._walked[pid]
                if walked.fd_count != 0 and self._fd_count(pid) == walked.fd_count:
                    continue  # its fds did not change: its slice of the re-walk will look again
                if self._take(pid, live[pid], unknown, owners):
                    return
        self._ownerless |= unknown

    def _take(self, pid: int, start_ticks: int, unknown: set[int], owners: dict[int, list[int]]) -> bool:
        """Walk `pid`, add the sockets it gained, strike them from `unknown`; True once none is left."""
        before = self._walked[pid].inodes
        inodes = self.walk(pid, start_ticks)
        for inode in inodes - before:
            owners.setdefault(inode, []).append(pid)
        unknown -= inodes
        return not unknown

    def _fd_count(self, pid: int) -> int:
        try:
            return os.stat(f"{self._proc}/{pid}/fd").st_size
        except OSError:
            return 0


__all__ = ["DEFAULT_REWALK_EVERY", "OwnerStats", "SocketOwners"]
