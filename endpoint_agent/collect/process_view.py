"""The processes of the last scan that trusted process events, kept so the next one touches only changes.

A scan that trusts the events starts from this view and replaces the records of the processes it
reads again; everything else keeps its very `ProcessInfo` object (which lets the evaluate stage
skip it: types.SnapshotDelta). Beside the records it keeps what makes each scan's work
proportional to what changed, not to the number of processes:

* `children(pid)`: the processes whose parent is `pid` (re-parented when it ends; their parent
  name follows a rename);
* `slice(turn)`: the processes the re-walk reads at that turn (pid modulo the number of slices);
* `watch`: zombies and incomplete records, read at every scan until they are gone or complete.

Not thread-safe: the collector that owns it serialises access.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from endpoint_agent.types import ProcessInfo


class ProcessView:
    def __init__(self, slices: int) -> None:
        if slices < 1:
            raise ValueError("slices must be >= 1")
        self.slices = slices
        self.infos: dict[int, ProcessInfo] = {}
        self.watch: set[int] = set()
        self.token: object = object()  # names this view's last snapshot (SnapshotDelta.base)
        self._children: dict[int, set[int]] = {}
        self._buckets: list[set[int]] = [set() for _ in range(slices)]

    def __len__(self) -> int:
        return len(self.infos)

    def reset(self, infos: Mapping[int, ProcessInfo], watch: Iterable[int]) -> None:
        """Start again from a full walk (every record at once)."""
        self.infos = dict(infos)
        self.watch = set(watch) & self.infos.keys()
        self._children = {}
        self._buckets = [set() for _ in range(self.slices)]
        for pid, info in self.infos.items():
            self._children.setdefault(info.ppid, set()).add(pid)
            self._buckets[pid % self.slices].add(pid)
        self.token = object()

    def put(self, info: ProcessInfo, *, watch: bool) -> None:
        pid = info.pid
        old = self.infos.get(pid)
        if old is None:
            self._buckets[pid % self.slices].add(pid)
        elif old.ppid != info.ppid:
            self._unlink(pid, old.ppid)
        if old is None or old.ppid != info.ppid:
            self._children.setdefault(info.ppid, set()).add(pid)
        self.infos[pid] = info
        if watch:
            self.watch.add(pid)
        else:
            self.watch.discard(pid)

    def drop(self, pid: int) -> None:
        old = self.infos.pop(pid, None)
        if old is not None:
            self._unlink(pid, old.ppid)
            self._buckets[pid % self.slices].discard(pid)
        self.watch.discard(pid)

    def children(self, pid: int) -> set[int]:
        return self._children.get(pid, set())

    def slice(self, turn: int) -> set[int]:
        return self._buckets[turn % self.slices]

    def _unlink(self, pid: int, ppid: int) -> None:
        siblings = self._children.get(ppid)
        if siblings is not None:
            siblings.discard(pid)
            if not siblings:
                del self._children[ppid]


__all__ = ["ProcessView"]
