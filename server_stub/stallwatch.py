"""What stalled the event loop: a watchdog thread that logs, for each stall, where the loop thread
was and who had the CPU meanwhile.

    watch = StallWatch(threshold=0.05)      # in the event loop (the app's lifespan)
    watch.start(); ...; watch.stop()

Off unless ENDPOINT_SERVER_STALL_MS is set (a diagnostic: `bench fleet` sets it and sums the
lines up per step). The loop runs a heartbeat callback every TICK; a thread checks it every
TICK and, while the heartbeat is more than `threshold` late, samples the loop thread's Python
stack. When the loop is back it logs one line: how long the stall was, the loop thread's most
seen stacks, and from the kernel's per-thread accounting (/proc/self/task/*/schedstat) how the
stall's time went -- the loop thread running (Python work on the loop), waiting for a CPU (the
machine busy: starved), or neither (blocked: the GIL held by another thread, or a blocking
call), and how much CPU this process's other threads used meanwhile (a GIL holder shows there),
and the garbage collector's time (gc.callbacks; older generations only: a collection in another
thread holds the GIL, so the loop thread shows it as "blocked"). From the kernel too, to tell a
blocked loop thread's causes apart: the CPU time the hypervisor took from this virtual machine meanwhile
(/proc/stat steal: a thread on a vCPU the host did not run is neither running nor waiting in
its own accounting), this process's major page faults (code or data read back from disk), and
the loop thread's scheduler state and wait channel, sampled (R, or S/D and where it sleeps).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from server_stub.periodic import name_os_thread

log = logging.getLogger(__name__)

ENV = "ENDPOINT_SERVER_STALL_MS"
# The loop's heartbeat and the watch's check, 40 a second each: each wake-up costs ~0.1 ms of CPU
# on this virtual machine (5 ms ticks cost the server ~3 % of a core, and the benchmark with it).
TICK = 0.025
STACK_DEPTH = 4  # innermost frames kept per sample
SNAPSHOT_TICKS = 2  # kernel counters read every 2 ticks (~0.15 ms each); the last before a stall kept
SAMPLE = 20  # a full collection's kept objects are counted by type, one in SAMPLE
PREFIX = "event loop stalled"  # bench/fleetsim/server.py reads these lines


def from_env() -> StallWatch | None:
    """A watch when ENDPOINT_SERVER_STALL_MS names a threshold in ms (> 0), else None."""
    text = os.environ.get(ENV, "").strip()
    try:
        ms = float(text) if text else 0.0
    except ValueError:
        log.warning("%s=%r is not a number of milliseconds: no stall watch", ENV, text[:40])
        return None
    return StallWatch(ms / 1000.0) if ms > 0 else None


def _schedstat(tid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of thread `tid`; zeros if unreadable."""
    try:
        run, wait, _ = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0, 0
    return int(run), int(wait)


def _threads() -> dict[int, tuple[int, int]]:
    try:
        tids = [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return {}
    return {tid: _schedstat(tid) for tid in tids}


def _steal_ms() -> float:
    """CPU time the hypervisor took from this machine (all its vCPUs), in ms since boot; 0 if unknown."""
    try:
        with open("/proc/stat", "rb") as f:
            first = f.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
        return int(first[8]) * 1000.0 / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def majflt(pid: int | str = "self") -> int:
    """Major page faults of a process so far (pages read back from disk); 0 if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat[stat.rindex(b")") + 2 :].split()[9])
    except (OSError, ValueError, IndexError):
        return 0


def _state(tid: int) -> str:
    """The thread's scheduler state and, when it sleeps, where: "R", "S ep_poll", "D folio_wait..."."""
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_bytes()
        state = stat[stat.rindex(b")") + 2 :][:1].decode()
        if state == "R":
            return state
        wchan = Path(f"/proc/self/task/{tid}/wchan").read_text().strip()
    except (OSError, ValueError, UnicodeDecodeError):
        return "?"
    return f"{state} {wchan}" if wchan and wchan != "0" else state


def _kernel(tid: int) -> tuple[float, tuple[int, int], float, int]:
    """(when, the thread's schedstat, machine steal ms, this process's major faults)."""
    return time.monotonic(), _schedstat(tid), _steal_ms(), majflt()


class _Counters:
    """_kernel() for one thread, from files kept open: a reading is three preads (~20 us here),
    not three opens (~120 us), since the watch reads them twenty times a second."""

    def __init__(self, tid: int) -> None:
        self._tid = tid
        paths = (f"/proc/self/task/{tid}/schedstat", "/proc/self/stat", "/proc/stat")
        try:
            self._fds: list[int] | None = [os.open(path, os.O_RDONLY) for path in paths]
        except OSError:
            self._fds = None  # read the slow way

    def read(self) -> tuple[float, tuple[int, int], float, int]:
        if self._fds is None:
            return _kernel(self._tid)
        try:
            sched, stat, machine = (os.pread(fd, 4096, 0) for fd in self._fds)
            run, wait, _ = sched.split()
            faults = int(stat[stat.rindex(b")") + 2 :].split()[9])
            steal = int(machine[: machine.index(b"\n")].split()[8]) * 1000.0 / _CLK_TCK
        except (OSError, ValueError, IndexError):
            return _kernel(self._tid)
        return time.monotonic(), (int(run), int(wait)), steal, faults

    def close(self) -> None:
        for fd in self._fds or ():
            os.close(fd)
        self._fds = None


try:
    _CLK_TCK = os.sysconf("SC_CLK_TCK") or 100
except (ValueError, OSError):
    _CLK_TCK = 100


def _where(frame: Any) -> str:
    parts: list[str] = []
    while frame is not None and len(parts) < STACK_DEPTH:
        code = frame.f_code
        parts.append(f"{Path(code.co_filename).stem}.{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return " < ".join(parts) or "idle"


class StallWatch:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._beat = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._loop_ident = 0
        self._loop_tid = 0
        self._counters: _Counters | None = None
        self._gc_started = (0.0, 0.0)
        # The latest collections, any thread's: (start, end, CPU s, generation, ran in the loop
        # thread, what a full one walked). Kept with times: a collection in another thread holds
        # the GIL, so this watch sees the stall only after it ended.
        self._collections: deque[tuple[float, float, float, int, bool, str]] = deque(maxlen=64)
        self.stalls = 0
        self._snapshot: tuple[float, tuple[int, int], float, int] | None = None  # _kernel(), before

    def start(self) -> None:
        """In the event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop_ident = threading.get_ident()
        self._loop_tid = threading.get_native_id()
        self._counters = _Counters(self._loop_tid)
        self._beat = time.monotonic()
        self._handle = self._loop.call_later(TICK, self._heartbeat)
        gc.callbacks.append(self._gc)
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._thread is not None:
            self._thread.join(2.0)
        if self._counters is not None:
            self._counters.close()

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(TICK, self._heartbeat)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation", 0) == 0:
            return  # hundreds a second, each well under a ms: counting them cost more than they do
        if phase == "start":
            self._gc_started = (time.monotonic(), time.thread_time())
            return
        began, cpu = self._gc_started
        ended, cpu = time.monotonic(), time.thread_time() - cpu
        generation = info.get("generation", 0)
        walked = ""
        if generation == 2:
            # What a full pass walks (all that is not frozen), by type: what to freeze or shrink.
            # One object in SAMPLE counted (counting them all took as long as the collection).
            kept = gc.get_objects(2)
            kinds = Counter(type(o).__name__ for o in kept[::SAMPLE]).most_common(4)
            walked = f"{info.get('collected', 0)} garbage freed, {len(kept)} objects kept: " + ", ".join(
                f"~{n * SAMPLE} {name}" for name, n in kinds
            )
            del kept
        self._collections.append(
            (began, ended, cpu, generation,
             threading.get_ident() == self._loop_ident, walked)
        )  # fmt: skip

    def _gc_during(self, began: float, ended: float) -> tuple[float, float, int, str]:
        """Collections overlapping [began, ended]: (wall s, CPU s, full ones, how the last full one went)."""
        wall = cpu = 0.0
        full, last = 0, ""
        for start, end, used, generation, in_loop, walked in list(self._collections):
            overlap = min(end, ended) - max(start, began)
            if overlap <= 0:
                continue
            wall += overlap
            cpu += used
            if generation == 2:
                full += 1
                where = "the loop thread" if in_loop else "another thread"
                last = f" in {where}, {(end - start) * 1e3:.0f} ms: {walked}"
        return wall, cpu, full, last

    def _watch(self) -> None:
        name_os_thread()
        stacks: Counter[str] = Counter()
        states: Counter[str] = Counter()
        before: dict[int, tuple[int, int]] = {}
        began = 0.0
        stalled = False
        ticks = 0
        while not self._stopped:
            time.sleep(TICK)  # one system call; an Event's wait costs several times its CPU
            now = time.monotonic()
            late = now - self._beat - TICK
            if not stalled and late > self.threshold:
                stalled, began = True, self._beat + TICK
                before = _threads()
                stacks.clear()
                states.clear()
            if stalled:
                if late > 2 * TICK:
                    frame = sys._current_frames().get(self._loop_ident)
                    stacks[_where(frame)] += 1
                    states[_state(self._loop_tid)] += 1
                    continue
                stalled = False
                self.stalls += 1
                self._report(began, self._beat - began, before, _threads(), stacks, states)
            ticks += 1
            if ticks % SNAPSHOT_TICKS == 0 or self._snapshot is None:
                # Read while the loop runs: a stall's counters start from the last one before it.
                self._snapshot = self._counters.read() if self._counters else _kernel(self._loop_tid)

    def _report(
        self,
        began: float,
        seconds: float,
        before: dict[int, tuple[int, int]],
        after: dict[int, tuple[int, int]],
        stacks: Counter[str],
        states: Counter[str],
    ) -> None:
        kernel_now = self._counters.read() if self._counters else _kernel(self._loop_tid)
        snap = self._snapshot or kernel_now
        # The loop thread's own accounting from the last snapshot before the stall (the stall is
        # seen THRESHOLD late: counting from then would call its first part "blocked"). That
        # window is a little longer than the stall, so "blocked" (the rest) is never overstated.
        (run1, wait1), (run0, wait0) = kernel_now[1], snap[1]
        loop_run, loop_wait = (run1 - run0) / 1e6, (wait1 - wait0) / 1e6
        steal = kernel_now[2] - snap[2]
        faults = kernel_now[3] - snap[3]
        # A thread started during the stall (a worker thread made on demand) counts from zero.
        others = [tid for tid in after if tid != self._loop_tid]
        others_run = sum(after[tid][0] - before.get(tid, (0, 0))[0] for tid in others) / 1e6
        others_wait = sum(after[tid][1] - before.get(tid, (0, 0))[1] for tid in others) / 1e6
        blocked = max(0.0, seconds * 1e3 - loop_run - loop_wait)
        gc_wall, gc_cpu, gc_full, full = self._gc_during(began, began + seconds)
        samples = sum(stacks.values()) or 1
        where = "; ".join(f"{n * 100 // samples}% {stack}" for stack, n in stacks.most_common(3))
        seen = sum(states.values()) or 1
        kstate = ", ".join(f"{n * 100 // seen}% {state}" for state, n in states.most_common(3))
        log.warning(
            "%s %.0f ms: loop thread ran %.0f ms, waited for a CPU %.0f ms, blocked %.0f ms; "
            "other threads ran %.0f ms, waited for a CPU %.0f ms; gc %.0f ms (on a CPU %.0f ms; %d full%s); "
            "hypervisor steal %.0f ms, major faults %d; loop thread (kernel): %s; loop thread in: %s; "
            "from monotonic %.3f",
            PREFIX, seconds * 1e3, loop_run, loop_wait, blocked, others_run, others_wait,
            gc_wall * 1e3, gc_cpu * 1e3, gc_full, full, steal, faults, kstate or "-", where or "-", began,
        )  # fmt: skip


__all__ = ["ENV", "PREFIX", "StallWatch", "from_env", "majflt"]
