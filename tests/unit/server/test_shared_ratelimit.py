"""Rate limits shared by several processes through the database (server_stub/ratesync.py).

Each simulated process has its own limiters and its own exchange, all on one real database
(SQLite file and PostgreSQL); time is simulated so that the bound is checked exactly, not
against a busy machine's clock.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from server_stub.ratelimit import RateLimiter
from server_stub.ratesync import RateSync
from server_stub.store import Store
from server_stub.store.tables import rate_usage


class SimClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Process:
    """One server process: its own limiter and its own exchange with the shared table."""

    def __init__(self, store: Store, clock: SimClock, rate: float, burst: int) -> None:
        self.limiter = RateLimiter(rate, burst, clock=clock)
        self.sync = RateSync(store.rate_usage, {"principal": self.limiter}, wall_clock=clock)
        self.admitted = 0

    def request(self, key: str) -> None:
        if self.limiter.acquire(key) == 0.0:
            self.admitted += 1


def flood(processes: list[Process], clock: SimClock, seconds: float, key: str = "node:h1") -> int:
    """Every process asks for `key` every 5 ms; each exchanges every 0.5 s. Returns all admitted."""
    step, exchange_every = 0.005, 100
    for tick in range(int(seconds / step)):
        clock.now += step
        for process in processes:
            process.request(key)
        if tick % exchange_every == exchange_every - 1:
            for process in processes:
                process.sync.exchange()
    return sum(p.admitted for p in processes)


@pytest.mark.parametrize("count", [2, 3])
def test_processes_together_hold_the_documented_rate(store: Store, count: int) -> None:
    clock = SimClock()
    rate, burst, seconds = 40.0, 20, 20.0
    processes = [Process(store, clock, rate, burst) for _ in range(count)]
    admitted = flood(processes, clock, seconds)
    documented = burst + rate * seconds
    # Each process alone would admit `documented`; together they stay within +-20% of it.
    assert documented * 0.8 <= admitted <= documented * 1.2, (admitted, documented)
    assert all(p.admitted > 0 for p in processes)  # no process is starved


def test_without_the_exchange_each_process_admits_the_full_rate(store: Store) -> None:
    # The control: the same flood, no exchange -- what the shared table prevents.
    clock = SimClock()
    processes = [Process(store, clock, 40.0, 20) for _ in range(2)]
    for _ in range(4000):
        clock.now += 0.005
        for p in processes:
            p.request("node:h1")
    assert sum(p.admitted for p in processes) >= 2 * (20 + 40 * 20) * 0.95


def test_a_process_that_meets_a_key_late_is_debited_what_the_others_took(store: Store) -> None:
    clock = SimClock()
    early, late = Process(store, clock, 10.0, 10), Process(store, clock, 10.0, 10)
    for _ in range(10):
        early.request("node:h1")
    early.sync.exchange()
    late.sync.exchange()  # the key is not kept there yet: nothing to debit, nothing marked seen
    assert late.limiter.wait("node:h1") == 0.0
    late.request("node:h1")  # first sight: a full bucket (one request admitted) ...
    late.sync.exchange()  # ... then the early process's 10 are debited
    assert late.admitted == 1
    assert late.limiter.blocked("node:h1")


def test_rows_are_read_only_when_another_process_consumed_since_the_last_look(store: Store) -> None:
    """A process alone with its busy keys (the table's sum: its own) reads one number a round,
    not thousands of rows; another's consumption is read, and debited, at the next round."""
    clock = SimClock()
    alone, other = Process(store, clock, 10.0, 100), Process(store, clock, 10.0, 100)
    for _ in range(3):
        clock.now += 0.5
        for i in range(50):
            for _ in range(10):
                alone.request(f"node:h{i}")
        alone.sync.exchange()
    assert alone.sync.rows_read == 0
    for _ in range(10):
        other.request("node:h7")
    other.sync.exchange()
    assert alone.sync.exchange() == 10 and alone.sync.rows_read == 1  # the other's 10, debited
    for i in range(50):
        alone.request(f"node:h{i}")  # below the share threshold: nothing published
    assert alone.sync.exchange() == 0 and alone.sync.rows_read == 1  # nothing new: not read again
    clock.now += 20.0  # the window passed: what is accounted is forgotten with it
    for _ in range(10):
        alone.request("node:h1")
    assert alone.sync.exchange() == 0 and alone.sync.rows_read == 1


def test_quiet_keys_never_reach_the_table(store: Store) -> None:
    clock = SimClock()
    process = Process(store, clock, 20.0, 100)  # shares keys that take >= 5 tokens in a window
    for i in range(500):
        process.request(f"node:quiet-{i}")  # one request each: a fleet polling
    for _ in range(4):
        process.request("node:busy")
    process.sync.exchange()
    for _ in range(5):
        process.request("node:busy")
    process.sync.exchange()
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(rate_usage.c.key, rate_usage.c.count)).all()
    assert [(k, c) for k, c in rows] == [("node:busy", 9)]


def test_old_slots_are_pruned(store: Store) -> None:
    clock = SimClock()
    process = Process(store, clock, 20.0, 2)
    for _ in range(3):
        process.request("node:h1")
    process.sync.exchange()
    clock.now += 3600
    for _ in range(25):  # a prune runs every 20 exchanges
        process.sync.exchange()
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(rate_usage)).scalar_one() == 0


def test_a_flood_of_made_up_keys_costs_bounded_memory(store: Store) -> None:
    clock = SimClock()
    limiter = RateLimiter(20.0, 2, max_keys=1000, clock=clock)
    sync = RateSync(store.rate_usage, {"address": limiter}, wall_clock=clock)
    for i in range(20_000):
        for _ in range(3):
            limiter.acquire(f"addr:10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        if i % 2000 == 1999:
            clock.now += 0.5
            sync.exchange()
    assert len(limiter) == 1000
    # At most the keys kept, once per exchange within the window (7 s at 0.5 s: 14 exchanges).
    assert len(sync._own) + len(sync._seen) <= 1000 * 15


def test_publishing_visits_only_busy_keys_and_forgets_quiet_counts_after_a_window() -> None:
    clock = SimClock()
    limiter = RateLimiter(20.0, 100, clock=clock)  # shares keys that take >= 5 tokens in a window
    for i in range(10_000):
        limiter.acquire(f"node:quiet-{i}")  # a fleet: one request each
    for _ in range(4):
        limiter.acquire("node:slow")
    assert limiter._busy == {}  # nothing for the exchange to walk
    for _ in range(5):
        limiter.acquire("node:busy")
    assert list(limiter._busy) == ["node:busy"]
    assert limiter.take_pending() == {"node:busy": 5}
    assert limiter._busy == {} and limiter.take_pending() == {}
    # "slow" took 4 tokens; one window later its count starts again: 4 + 1 is not 5 in a window.
    clock.now += limiter.window + 1
    limiter.acquire("node:slow")
    assert limiter.take_pending() == {}
    for _ in range(4):
        limiter.acquire("node:slow")
    assert limiter.take_pending() == {"node:slow": 5}
    # A busy key forgotten (the least recently used, past max_keys) is not published.
    small = RateLimiter(20.0, 100, max_keys=2, clock=clock)
    for _ in range(5):
        small.acquire("node:a")
    small.acquire("node:b")
    small.acquire("node:c")  # forgets node:a
    assert small.take_pending() == {} and small._busy == {}
