"""The policy versions being served, with their envelopes and ETags, held in memory.

Refreshed right after a publish, rollout change or rollback in this process
(PolicyRepo.on_change), and within about a second of one in another process sharing the
database (server_stub/watcher.py). Which version a host gets is computed from memory
(server_stub/rollout.py), so a policy poll costs no query. While the change feed is not being
read (database unreachable) the copy is not trusted: the route reloads it from the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from server_stub.rollout import choose_version
from server_stub.store import PolicyRepo, Rollout


def _always_fresh() -> bool:
    return True


class PolicyCache:
    def __init__(self, policies: PolicyRepo, fresh: Callable[[], bool] = _always_fresh) -> None:
        self._policies = policies
        self.fresh = fresh  # set by the watcher: whether memory may be trusted now
        self._lock = threading.Lock()
        self._rollouts: tuple[Rollout, ...] | None = None
        self._wanted = 0  # bumped by each change seen
        self._loaded = -1  # the change count the held copy was loaded after

    def peek(self) -> tuple[Rollout, ...] | None:
        """The held copy, or None when it must be (re)loaded first (never touches the database)."""
        if self._loaded != self._wanted or not self.fresh():
            return None
        return self._rollouts

    def current(self) -> tuple[Rollout, ...]:
        """The held copy, loading it from the database when needed (call from a worker thread)."""
        held = self.peek()
        return held if held is not None else self.refresh()

    def invalidate(self) -> None:
        with self._lock:
            self._wanted += 1

    def refresh(self) -> tuple[Rollout, ...]:
        """Load from the database now; a load that started before a newer one never wins."""
        with self._lock:
            self._wanted += 1
            ticket = self._wanted
        rollouts = tuple(self._policies.rollouts())
        with self._lock:
            if ticket > self._loaded:
                self._rollouts, self._loaded = rollouts, ticket
            return rollouts


def served_for(host_id: str, rollouts: Sequence[Rollout]) -> Rollout | None:
    """The version this host gets (newest whose rollout includes it), or None."""
    version = choose_version(host_id, [(r.version, r.percent) for r in rollouts])
    if version is None:
        return None
    return next(r for r in rollouts if r.version == version)
