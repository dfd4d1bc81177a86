"""Run a scenario (bench/fleetsim/scenarios.py) in simulator processes and gather what they saw.

    results = run_workers("ramp", params, procs=2, on_result=judge, on_start=started)

Each process runs its own event loop (uvloop when installed: the simulator must cost far less
per request than the server it measures) and sends one Recorder per result label; once every
process has sent a label, `on_result(label, merged)` may return False to stop them all. Once all
have prepared (`await ctx.begin()`), they start together at a monotonic moment told to
`on_start(pids, t0)`. The
processes die with the driver (PR_SET_PDEATHSIG) and are killed by PID if they outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench.fleetsim.stats import Recorder

Judge = Callable[[str, Recorder], bool]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def loop_name() -> str:
    return "uvloop" if loop_factory() is not asyncio.new_event_loop else "asyncio"


def _worker(conn: Any, scenario: str, params: dict[str, Any], worker: int, procs: int) -> None:
    from bench.fleetsim.scenarios import SCENARIOS, Context
    from bench.load import raise_nofile_limit

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the driver
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides; it kills us on Ctrl-C
    raise_nofile_limit(65536)
    stop = False

    async def begin() -> bool:
        nonlocal stop
        conn.send(("ready", None, None))  # set up: the driver picks a common start
        go = conn.recv()
        if go == "stop":
            return False

        loop = asyncio.get_running_loop()

        def check() -> None:
            # Polled, not loop.add_reader: that makes the pipe non-blocking, and a large result
            # would then be sent in part.
            nonlocal stop
            try:
                stop = stop or (conn.poll() and conn.recv() == "stop")
            except (EOFError, OSError):
                stop = True
            if not stop:
                loop.call_later(0.2, check)

        check()
        await asyncio.sleep(max(0.0, go - time.monotonic()))
        return not stop

    async def main() -> None:
        ctx = Context(
            worker, procs, lambda label, rec: conn.send(("result", label, rec)), lambda: stop, begin
        )
        await SCENARIOS[scenario](ctx, params)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(main())
        conn.send(("done", None, None))
    except BaseException:
        conn.send(("error", traceback.format_exc(limit=8), None))


def run_workers(
    scenario: str,
    params: dict[str, Any],
    *,
    procs: int = 1,
    on_result: Judge | None = None,
    on_start: Callable[[list[int], float], None] | None = None,
) -> dict[str, Recorder]:
    ctx = multiprocessing.get_context("spawn")
    pipes = []
    workers = []
    try:
        for w in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, scenario, params, w, procs), daemon=True)
            proc.start()
            child.close()
            pipes.append(parent)
            workers.append(proc)
        for pipe in pipes:
            what, text, _ = pipe.recv()
            if what != "ready":
                raise RuntimeError(f"a fleet simulator process failed to start:\n{text}")
        t0 = time.monotonic() + 0.5
        for pipe in pipes:
            pipe.send(t0)
        if on_start is not None:
            on_start([p.pid for p in workers if p.pid is not None], t0)
        return _gather(pipes, procs, on_result)
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")  # a no-op for a process that is done
        for proc in workers:
            proc.join(timeout=20)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _gather(pipes: list[Any], procs: int, on_result: Judge | None) -> dict[str, Recorder]:
    pending: dict[str, list[Recorder]] = {}
    merged: dict[str, Recorder] = {}
    live = set(pipes)
    while live:
        for pipe in multiprocessing.connection.wait(list(live)):
            try:
                what, label, rec = pipe.recv()
            except EOFError:
                live.discard(pipe)
                raise RuntimeError("a fleet simulator process died") from None
            if what == "error":
                raise RuntimeError(f"fleet simulator failed:\n{label}")
            if what == "done":
                live.discard(pipe)
                continue
            pending.setdefault(label, []).append(rec)
            if len(pending[label]) == procs:
                merged[label] = Recorder.merged(pending.pop(label))
                if on_result is not None and not on_result(label, merged[label]):
                    for p in live:
                        p.send("stop")
    return merged


__all__ = ["loop_name", "run_workers"]
