"""Incremental snapshots (Linux): each scan reads only what can have changed since the last one.

The same `Snapshot` as `Collector(sockets=all_namespace_sockets)` (every process, and the inet
sockets of every network namespace labelled with their namespace), at a fraction of the cost:

* Processes: one listing of /proc and one read of /proc/<pid>/stat per process
  (collect.proc_stat). Executable, command line, owner, SHA-256 and owning package are read
  once per process instance and program (collect.process_cache); psutil is asked only about
  processes the cache has not seen.
* Sockets: the tables are read once per network namespace and only their new lines parsed
  (collect.socket_tables); socket inodes are joined to their holders with a map kept across
  scans (collect.socket_owners), so file descriptors are read for new processes and for
  sockets no known process holds, not for every process on every scan.

While process events track the processes (`track`, wired by endpoint_agent/watch.py: exec,
exit and rename events reach `forget`), a scan starts from the last one's processes
(collect.process_view) and reads only what the events leave open: the PIDs that can belong
to a process nobody announced (collect.new_pids: a range of new PIDs from the kernel's
counters, or a listing of /proc when that is not cheaper), PIDs an event marked, zombies and
incomplete records, the children of processes that ended, and a rotating slice of all of them
(every process once within `rewalk_scans` scans; /proc is listed once per round as well: a
change found there that no event told of by the next scan is counted in
`tracking["repairs"]`). Every other process keeps its very record, and the snapshot says
which ones changed (`Snapshot.delta`), so an idle scan costs about the same with 300 or 3,000
processes. Each process keeps the network namespace it was read in, and the socket tables are
read only when the policy looks at connections. Lost events (`distrust`) make the next scan
read everything again; without tracking every scan does (the polling fallback).

`snapshot_of(pids)` is the event-driven fast path: a snapshot of just those processes (a new
process right after its exec) and their sockets. Their fds are always read afresh; the tables
of their namespace are read only when they hold sockets, and parsed only when one of those
sockets is in them (an inet socket).

Thread-safe: a lock serialises `snapshot`, `snapshot_of` and `forget` (the scan job and the
exec watcher share one collector).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from endpoint_agent.clock import Clock, SystemClock
from endpoint_agent.collect.cmdline import read_cmdline
from endpoint_agent.collect.hashing import DEFAULT_MAX_BYTES, BudgetedHasher, HashCache, HashStats
from endpoint_agent.collect.hashing import DEFAULT_MAX_ENTRIES as DEFAULT_HASH_ENTRIES
from endpoint_agent.collect.heap import release_free_memory
from endpoint_agent.collect.netns import netns_of
from endpoint_agent.collect.new_pids import Listing, NewPids, Probe
from endpoint_agent.collect.package_trust import PackageResolver, system_package_resolver
from endpoint_agent.collect.proc_stat import ProcStat, boot_time, create_time, list_pids, read_stat
from endpoint_agent.collect.process_cache import (
    DEFAULT_MAX_ENTRIES,
    CachedProcess,
    ProcessCache,
    same_program,
)
from endpoint_agent.collect.process_view import ProcessView
from endpoint_agent.collect.socket_owners import DEFAULT_REWALK_EVERY, SocketOwners
from endpoint_agent.collect.socket_tables import NamespaceTables, SocketTables, read_texts
from endpoint_agent.errors import CollectError
from endpoint_agent.types import Connection, ProcessInfo, Snapshot, SnapshotDelta

logger = logging.getLogger(__name__)

_COMM_LEN = 15  # the kernel truncates comm; psutil then takes the name from argv[0]
_DENIED: Any = object()
MAX_DIRTY = 100_000  # PIDs events may mark between two scans before the next one just reads everything


@dataclass(frozen=True, slots=True)
class Details:
    """What is read once per process instance and program (besides the hash and the package)."""

    exe: str | None
    cmdline: tuple[str, ...]
    uid: int | None  # real uid
    denied: bool  # some attribute could not be read (access denied, zombie)


DetailsReader = Callable[[int], "Details | None"]


def read_details(pid: int) -> Details | None:
    """exe and real uid through psutil, the command line bounded (collect.cmdline); None when gone."""
    try:
        info = psutil.Process(pid).as_dict(["exe", "uids"], ad_value=_DENIED)
    except psutil.NoSuchProcess:
        return None
    except (psutil.Error, OSError):
        return Details(None, (), None, True)
    exe, uids = info.get("exe"), info.get("uids")
    bounded = read_cmdline(pid)
    cmdline = _DENIED if bounded is None else bounded
    return Details(
        exe=exe if isinstance(exe, str) and exe else None,
        cmdline=cmdline if isinstance(cmdline, tuple) else (),
        uid=uids.real if uids is not None and uids is not _DENIED else None,
        denied=_DENIED in (exe, cmdline, uids),
    )


@dataclass(frozen=True, slots=True)
class CollectStats:
    processes_cached: int
    cache_hits: int
    details_read: int
    fd_walks: int
    socket_searches: int
    hashes: HashStats

    def to_json(self) -> dict[str, int]:
        return {
            "processes_cached": self.processes_cached,
            "cache_hits": self.cache_hits,
            "details_read": self.details_read,
            "fd_walks": self.fd_walks,
            "socket_searches": self.socket_searches,
            "files_hashed": self.hashes.files_hashed,
        }


class IncrementalCollector:
    """A SnapshotSource (see the module docstring); keep one for the life of the service."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        hash_max_bytes: int = DEFAULT_MAX_BYTES,
        hash_max_entries: int = DEFAULT_HASH_ENTRIES,
        packages: PackageResolver | None = None,
        max_processes: int = DEFAULT_MAX_ENTRIES,
        rewalk_every: int = DEFAULT_REWALK_EVERY,
        details: DetailsReader | None = None,
        proc_root: str = "/proc",
        want_hashes: Callable[[], bool] | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        # Budgeted and queued (collect/hashing.py), and only while the policy has a sha256 rule.
        self._hashes = BudgetedHasher(HashCache(max_bytes=hash_max_bytes, max_entries=hash_max_entries))
        self._want_hashes = want_hashes or (lambda: True)
        self._hashing = True  # asked once per snapshot
        self._packages = packages if packages is not None else system_package_resolver()
        self._cache = ProcessCache(max_entries=max_processes)
        self._owners = SocketOwners(rewalk_every=rewalk_every, proc_root=proc_root)
        self._tables = SocketTables(proc_root=proc_root)
        self._read_details = details or read_details
        self._proc = proc_root
        self._lock = threading.RLock()
        self._users: dict[int, str] = {}  # uid -> name, for one scan (accounts can be renamed)
        self._details_read = 0
        self._boot: float | None = None
        self._tracking: _Tracking | None = None
        self._view: ProcessView | None = None  # while tracking: the last trusted scan's processes
        self._new_pids = NewPids(proc_root)
        self._dirty: set[int] = set()  # PIDs events said changed (exec, rename, exit) since the last scan
        self._walk_all = False
        self._sockets_read = True
        self._scans = 0
        self._full_walks = 0
        self._untracked_read = 0
        self._repairs = 0
        self._suspects: set[int] = set()

    @property
    def cache(self) -> ProcessCache:
        return self._cache

    @property
    def hash_stats(self) -> HashStats:
        return self._hashes.stats

    @property
    def stats(self) -> CollectStats:
        with self._lock:
            return CollectStats(
                processes_cached=len(self._cache),
                cache_hits=self._cache.stats.hits,
                details_read=self._details_read,
                fd_walks=self._owners.stats.walks,
                socket_searches=self._owners.stats.searches,
                hashes=self._hashes.stats,
            )

    def hash_status(self) -> dict[str, object]:
        """For status.json: whether the policy needs digests, and the hashing queue."""
        return {"wanted": self._hashing, **self._hashes.status()}

    def binary_digest(self, pid: int, exe: str) -> str | None:
        """SHA-256 of what `pid` runs (the shared hash cache), for the per-binary exec triage."""
        with self._lock:
            return self._hashes.hash_process_exe(pid, exe).sha256

    def binary_package(self, pid: int, exe: str) -> str | None:
        """The system package owning what `pid` runs, for the per-binary exec triage."""
        with self._lock:
            return self._packages.package_of(pid, exe) if self._packages is not None else None

    def forget(self, pid: int) -> None:
        """The process `pid` exited (an exit event): drop what is cached about it."""
        with self._lock:
            self._cache.forget(pid)
            self._owners.forget(pid)
            self._suspects.discard(pid)  # the event came after all
            if self._view is not None:
                self._dirty.add(pid)  # read again at the next scan (gone, or another program)
                if len(self._dirty) > MAX_DIRTY:
                    self._walk_all = True  # scans stopped meanwhile? the next one reads everything
                    self._dirty.clear()

    # -- tracking: process events keep the cache current -------------------------------------

    def track(
        self, *, rewalk_scans: int, trusted: Callable[[], bool], sockets_wanted: Callable[[], bool]
    ) -> None:
        """Scans trust the cache while `trusted()` (exec, exit and rename events reach `forget`).

        Every process is read again once per `rewalk_scans` scans, a slice per scan; what that
        finds wrong is counted (`repairs`). `sockets_wanted()`: whether the active policy looks
        at connections at all (no socket tables are read while it does not).
        """
        if rewalk_scans < 1:
            raise ValueError("rewalk_scans must be >= 1")
        with self._lock:
            self._tracking = _Tracking(rewalk_scans, trusted, sockets_wanted)
            self._view = ProcessView(rewalk_scans)  # the next trusted scan reads every process once:
            self._new_pids = NewPids(self._proc)  # from a listing of /proc

    def distrust(self) -> None:
        """Events were lost (an overrun, checks dropped, the source failed): the next scan walks all."""
        with self._lock:
            self._walk_all = True

    @property
    def tracking(self) -> dict[str, int | bool] | None:
        """What `status` shows of tracking (None: every scan walks every process)."""
        with self._lock:
            t = self._tracking
            if t is None:
                return None
            return {
                "trusted": t.trusted(),
                "rewalk_scans": t.rewalk_scans,
                "full_walks": self._full_walks,
                "untracked_read": self._untracked_read,
                "files_hashed": self._hashes.stats.files_hashed,
                "repairs": self._repairs,
                "pid_probes": self._new_pids.probes,  # scans that read a PID range instead of listing /proc
                "listings": self._new_pids.listings,
            }

    # -- full scan ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._hashing = self._want_hashes()
            taken_at = self._clock.now()
            boot = self._boot_time()
            self._scans += 1
            self._repairs += len(self._suspects)  # the events never told of these changes
            self._suspects.clear()
            tracking, view = self._tracking, self._view
            trusted = tracking is not None and tracking.trusted() and not self._walk_all
            delta: SnapshotDelta | None = None
            rewalk: set[int] | None = None
            if tracking is not None and view is not None and trusted:
                stats, rewalk, delta = self._tracked_scan(view, boot)
                processes = dict(view.infos)
                # The records for the socket owners: only when a rule looks at connections.
                entries: Mapping[int, CachedProcess] = (
                    self._entries_of(processes) if tracking.sockets_wanted() else {}
                )
            else:
                processes, entries, stats = self._full_walk(boot)
                if view is not None:  # tracking: the next trusted scan starts from this one
                    view.reset(processes, (p for p, st in stats.items() if st.zombie or entries[p].retry_due))
            connections: tuple[Connection, ...] = ()
            # Trusting events, the tables are read only when some rule looks at connections.
            wanted = not trusted or tracking is None or tracking.sockets_wanted()
            if wanted:
                if not self._sockets_read:
                    rewalk = set(entries)  # the holders' fds went unread meanwhile: read them all once
                try:
                    connections = self._all_sockets(processes, entries, stats, rewalk)
                except OSError as exc:
                    raise CollectError(f"cannot list network connections: {exc}") from exc
            self._sockets_read = wanted
            self._hashes.end_scan()
            self._users.clear()
            # A scan allocates and frees megabytes (the tables' text, the first scan everything):
            # give them back rather than hold them between scans (a millisecond; ~5 MB of RSS).
            release_free_memory()
            return Snapshot(taken_at=taken_at, processes=processes, connections=connections, delta=delta)

    def _full_walk(
        self, boot: float
    ) -> tuple[dict[int, ProcessInfo], dict[int, CachedProcess], dict[int, ProcStat]]:
        """Every process read again (no events to trust, or lost ones)."""
        if self._tracking is not None:
            self._new_pids.mark()  # the next trusted scan's PID range starts here
        pids = list_pids(proc_root=self._proc)
        if not pids:
            raise CollectError(f"cannot list processes: {self._proc} is empty or unreadable")
        stats = {pid: st for pid in pids if (st := read_stat(pid, proc_root=self._proc)) is not None}
        entries = {pid: e for pid, st in stats.items() if (e := self._entry(st)) is not None}
        if self._tracking is not None:
            self._full_walks += 1
            self._walk_all = False
            self._dirty.clear()
        self._cache.retain(entries.keys())
        names = {pid: _name(st.comm, entries[pid]) for pid, st in stats.items() if pid in entries}
        processes = {pid: self._info(stats[pid], e, names, boot) for pid, e in entries.items()}
        return processes, entries, stats

    def _tracked_scan(
        self, view: ProcessView, boot: float
    ) -> tuple[dict[int, ProcStat], set[int], SnapshotDelta]:
        """The consistency check: read only what the events leave open, and update the view.

        Read: PIDs that can belong to processes nobody announced (collect.new_pids: a range of
        PIDs, or a listing of /proc against the view), PIDs an event made stale (`forget`),
        zombies and incomplete records (`watch`), this scan's slice of the re-walk, and the
        children of processes that ended (re-parented). Once per round of slices /proc is
        listed as well: a new process the probes missed counts as a repair.
        """
        known = view.infos
        turn = self._scans % view.slices
        due = set(view.slice(turn))
        found = self._new_pids.look(len(known), listing=turn == 0)
        if isinstance(found, Listing):
            listed = found.pids
            if not listed:
                raise CollectError(f"cannot list processes: {self._proc} is empty or unreadable")
            new = listed - known.keys()
            ended = set(known.keys() - listed)
            self._cache.retain(listed)  # records of processes whose exit no event told of
            if found.expected is not None:
                for pid in new - found.expected - self._dirty:
                    self._suspects.add(pid)  # a repair unless its exec event comes by the next scan
                    logger.debug("listing found pid %d that the PID probes missed", pid)
        else:
            new = found.pids - known.keys()
            ended = set()
        dirty, self._dirty = self._dirty, set()
        stats: dict[int, ProcStat] = {}
        fresh: dict[int, CachedProcess] = {}
        absent: set[int] = set()
        queue: set[int] = set(new | dirty | view.watch | due) - ended
        queue |= {c for pid in ended for c in view.children(pid)} - ended
        while queue:
            for pid in sorted(queue):
                st = read_stat(pid, proc_root=self._proc)
                entry = None if st is None or st.thread else self._tracked_entry(pid, st, pid in due)
                if st is None or entry is None:  # gone, or a thread (a probe reads threads too)
                    if pid in known:
                        ended.add(pid)
                    elif st is None and pid in new:
                        absent.add(pid)
                    continue
                stats[pid] = st
                fresh[pid] = entry
                old = known.get(pid)
                if old is not None and old.create_time != create_time(st.start_ticks, boot):
                    ended.add(pid)  # its PID names another process now: the old one's children...
            # ...and the children of every process that ended were re-parented: read them too.
            queue = {c for pid in ended for c in view.children(pid)} - stats.keys() - ended
        if isinstance(found, Probe):
            self._new_pids.missing(absent)
        changed = self._apply(view, stats, fresh, ended, boot)
        removed = frozenset(ended - stats.keys())
        delta = SnapshotDelta(base=view.token, token=object(), changed=frozenset(changed), removed=removed)
        view.token = delta.token
        return stats, due, delta

    def _tracked_entry(self, pid: int, st: ProcStat, due: bool) -> CachedProcess | None:
        cached = self._cache.get(pid)
        if cached is None:
            self._untracked_read += 1
        elif due and not cached.retry_due and _stale(cached, st):
            # An exec or rename no event told of -- or one whose event is still on its way (the
            # watcher reads in batches): it counts as a repair unless that event comes by the next scan.
            self._suspects.add(pid)
            logger.debug("re-walk re-read pid %d (%s): changed without an event so far", pid, st.comm)
        return self._entry(st)

    def _apply(
        self,
        view: ProcessView,
        stats: Mapping[int, ProcStat],
        fresh: Mapping[int, CachedProcess],
        ended: set[int],
        boot: float,
    ) -> set[int]:
        """Put what the scan read into the view; the PIDs whose record is another object now."""
        known = view.infos
        for pid in ended - fresh.keys():
            view.drop(pid)
            self._cache.forget(pid)
        names = {pid: _name(st.comm, fresh[pid]) for pid, st in stats.items()}
        for st in stats.values():
            parent = known.get(st.ppid)
            if st.ppid not in names and parent is not None:
                names[st.ppid] = parent.name
        changed: set[int] = set()
        renamed: set[int] = set()
        for pid, st in stats.items():
            entry = fresh[pid]
            old = known.get(pid)
            info = self._info(st, entry, names, boot)
            view.put(info, watch=st.zombie or entry.retry_due)
            if info is not old:
                changed.add(pid)
                if old is None or old.name != info.name or pid in ended:
                    renamed.add(pid)
        # A child the scan did not read keeps its record, with its parent's new name.
        for pid in renamed:
            for child in view.children(pid) - stats.keys():
                info = known[child]
                if info.parent_name != names[pid]:
                    info = dataclasses.replace(info, parent_name=names[pid])
                    view.put(info, watch=child in view.watch)
                    if (record := self._cache.get(child)) is not None:
                        record.info = info
                    changed.add(child)
        return changed

    def _entries_of(self, processes: Mapping[int, ProcessInfo]) -> dict[int, CachedProcess]:
        return {pid: e for pid in processes if (e := self._cache.get(pid)) is not None}

    def _all_sockets(
        self,
        processes: Mapping[int, ProcessInfo],
        entries: Mapping[int, CachedProcess],
        stats: Mapping[int, ProcStat],
        rewalk: set[int] | None,
    ) -> tuple[Connection, ...]:
        host = netns_of("self", proc_root=self._proc)
        read: list[tuple[list[int], NamespaceTables]] = []
        for ns, members in sorted(self._by_netns(entries, stats, rewalk).items()):
            tables = self._tables.read(ns, None if ns == host else ns, members)
            if tables is not None:  # None: every process in it exited meanwhile
                read.append((members, tables))
        read.sort(key=lambda item: item[1].label is not None)  # the agent's own namespace first
        self._tables.retain(tables.netns_id for _, tables in read)
        owners = self._owners.resolve(
            {pid: e.start_ticks for pid, e in entries.items()},
            [(members, tables.records) for members, tables in read],
            {pid: processes[pid].uid for pid in entries},
            rewalk=rewalk,
        )
        out: list[Connection] = []
        for _, tables in read:
            out.extend(self._tables.connections(tables, owners))
        return tuple(out)

    def _by_netns(
        self, entries: Mapping[int, CachedProcess], stats: Mapping[int, ProcStat], rewalk: set[int] | None
    ) -> dict[str, list[int]]:
        """netns -> member PIDs; a tracked process keeps the namespace it had (setns without exec is rare)."""
        groups: dict[str, list[int]] = {}
        for pid in sorted(entries):
            entry = entries[pid]
            if rewalk is None or pid in stats or entry.netns is None:
                entry.netns = netns_of(pid, proc_root=self._proc)
            if entry.netns is not None:
                groups.setdefault(entry.netns, []).append(pid)
        return groups

    # -- fast path ---------------------------------------------------------------------------

    def snapshot_of(self, pids: Iterable[int]) -> Snapshot:
        """Just these processes (the live, non-zombie ones) and their inet sockets."""
        with self._lock:
            self._hashing = self._want_hashes()
            taken_at = self._clock.now()
            # The full scans' boot time: no read of /proc/stat per exec, and the same process keys.
            boot = self._boot if self._boot is not None else self._boot_time()
            stats = {
                pid: st
                for pid in sorted(set(pids))
                if (st := read_stat(pid, proc_root=self._proc)) is not None and not st.zombie
            }
            entries = {pid: e for pid, st in stats.items() if (e := self._entry(st)) is not None}
            names = {pid: _name(stats[pid].comm, e) for pid, e in entries.items()}
            for pid in entries:
                ppid = stats[pid].ppid
                if ppid not in names and (name := self._name_of(ppid)) is not None:
                    names[ppid] = name
            processes = {pid: self._info(stats[pid], e, names, boot) for pid, e in entries.items()}
            connections = self._sockets_of({pid: stats[pid] for pid in processes})
            self._users.clear()
            return Snapshot(taken_at=taken_at, processes=processes, connections=connections)

    def _name_of(self, pid: int) -> str | None:
        st = read_stat(pid, proc_root=self._proc)
        if st is None:
            return None
        entry = self._cache.get(pid)
        usable = entry is not None and entry.start_ticks == st.start_ticks and entry.image == st.image
        return _name(st.comm, entry if usable else None)

    def _sockets_of(self, stats: Mapping[int, ProcStat]) -> tuple[Connection, ...]:
        by_ns: dict[str, dict[int, frozenset[int]]] = {}
        for pid, st in stats.items():
            inodes = self._owners.walk(pid, st.start_ticks)  # always afresh: it may have just opened them
            ns = netns_of(pid, proc_root=self._proc) if inodes else None
            if ns is not None:
                by_ns.setdefault(ns, {})[pid] = inodes
        if not by_ns:
            return ()
        host = netns_of("self", proc_root=self._proc)
        out: list[Connection] = []
        for ns, held in sorted(by_ns.items()):
            texts = read_texts(ns, list(held), proc_root=self._proc)
            # A cheap substring test first: most new processes hold unix sockets only.
            needles = [f" {inode} " for inodes in held.values() for inode in inodes]
            if texts is None or not any(needle in text for text in texts.values() for needle in needles):
                continue
            # Parsed (incrementally) and classified with the whole tables -- another process's
            # listener decides "inbound" -- then only the sockets of these processes are kept.
            tables = self._tables.parse(ns, None if ns == host else ns, texts)
            owners: dict[int, list[int]] = {}
            for pid, inodes in held.items():
                for inode in inodes:
                    owners.setdefault(inode, []).append(pid)
            out.extend(self._tables.connections(tables, owners, only=set(held)))
        return tuple(out)

    # -- one process -------------------------------------------------------------------------

    def _boot_time(self) -> float:
        boot = boot_time(proc_root=self._proc)
        if boot is not None:
            self._boot = boot
        if self._boot is None:
            raise CollectError(f"cannot read the boot time from {self._proc}/stat")
        return self._boot

    def _entry(self, st: ProcStat) -> CachedProcess | None:
        """The cached record of this instance, read (once) when there is none; None if it vanished."""
        cached = self._cache.lookup(st)
        if cached is not None and not cached.retry_due:
            self._fill_digest(cached)
            return cached
        entry = self._read(st)
        if entry is None:
            return cached  # vanished while read again: the incomplete record is all there is
        self._cache.store(entry, previous=cached)
        return entry

    def _read(self, st: ProcStat) -> CachedProcess | None:
        if st.kernel_thread:
            return CachedProcess(
                st.pid, st.start_ticks, st.image, st.comm, None, (), self._username(0), 0,
                None, None, kernel_thread=True, partial=False,
            )  # fmt: skip
        details = self._read_details(st.pid)
        self._details_read += 1
        if details is None:
            return None
        again = read_stat(st.pid, proc_root=self._proc)
        if again is None or again.start_ticks != st.start_ticks:
            return None  # exited, or the PID was reused while we read: the next scan sees the new one
        sha256 = None
        hash_failed = False
        package = None
        if details.exe:
            if self._hashing:
                result = self._hashes.hash_process_exe(st.pid, details.exe)
                sha256 = result.sha256
                hash_failed = sha256 is None and not result.too_large and not result.pending
            if self._packages is not None:
                package = self._packages.package_of(st.pid, details.exe)
        return CachedProcess(
            pid=st.pid,
            start_ticks=st.start_ticks,
            image=st.image,  # the layout before the read: an exec during it is seen next time
            comm=st.comm,
            exe=details.exe,
            cmdline=details.cmdline,
            username=self._username(details.uid) if details.uid is not None else None,
            uid=details.uid,
            sha256=sha256,
            package=package,
            kernel_thread=False,
            partial=details.denied or hash_failed,
        )

    def _fill_digest(self, entry: CachedProcess) -> None:
        """A digest that was queued, or not wanted when the process was read, once it is known."""
        if self._hashing and entry.sha256 is None and entry.exe and not entry.kernel_thread:
            digest = self._hashes.hash_process_exe(entry.pid, entry.exe).sha256
            if digest is not None:
                entry.sha256 = digest
                entry.info = None  # rebuilt with it

    def _info(self, st: ProcStat, entry: CachedProcess, names: Mapping[int, str], boot: float) -> ProcessInfo:
        name = names[st.pid]
        parent_name = names.get(st.ppid) if st.ppid != st.pid else None
        started = create_time(st.start_ticks, boot)
        old = entry.info
        if (
            old is not None
            and old.ppid == st.ppid
            and old.name == name
            and old.parent_name == parent_name
            and old.create_time == started
        ):
            return old
        entry.info = ProcessInfo(
            pid=st.pid,
            ppid=st.ppid,
            name=name,
            exe=entry.exe,
            cmdline=entry.cmdline,
            username=entry.username,
            uid=entry.uid,
            create_time=started,
            sha256=entry.sha256,
            parent_name=parent_name,
            kernel_thread=entry.kernel_thread,
            partial=entry.partial,
            package=entry.package,
        )
        return entry.info

    def _username(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)  # as psutil: an account that no longer exists
            self._users[uid] = name
        return name


@dataclass(frozen=True, slots=True)
class _Tracking:
    rewalk_scans: int
    trusted: Callable[[], bool]
    sockets_wanted: Callable[[], bool]


def _stale(entry: CachedProcess, st: ProcStat) -> bool:
    """Whether a fresh stat shows an exec, a reused PID or a rename the record (and the events) missed.

    A new parent is not one: re-parenting follows the parent's exit, which scans check themselves;
    nor is a kernel worker's name (the kernel shows the work it is doing in it).
    """
    if entry.kernel_thread:
        return entry.start_ticks != st.start_ticks
    return not same_program(entry, st) or entry.comm != st.comm


def _name(comm: str, entry: CachedProcess | None) -> str:
    """psutil's name(): comm, or argv[0]'s basename when comm is its truncation; else exe's basename."""
    name = comm
    if entry is not None and len(comm) >= _COMM_LEN and entry.cmdline:
        extended = os.path.basename(entry.cmdline[0])
        if extended.startswith(comm):
            name = extended
    if not name and entry is not None and entry.exe:
        name = os.path.basename(entry.exe)
    return name


def linux_procfs_available(proc_root: str = "/proc") -> bool:
    """Whether this machine has the Linux /proc the incremental collector reads."""
    return read_stat(os.getpid(), proc_root=proc_root) is not None


__all__ = [
    "CollectStats",
    "Details",
    "DetailsReader",
    "IncrementalCollector",
    "linux_procfs_available",
    "read_details",
]
