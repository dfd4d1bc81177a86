"""What one simulator process runs: a fleet ramp, or a closed or open loop of one request kind.

Each scenario is `async def NAME(ctx, params)`; `ctx.report(label, recorder)` sends a result to
the driver (bench/fleetsim/driver.py) and `ctx.stopped` tells that the driver asked to stop;
every scenario prepares, then awaits `ctx.begin()`: all processes start at the same moment.
Hosts are split among processes by index (`index % procs == worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.fleetsim.agent import Fleet, Server, SimHost, Unavailable, event_batch, make_hosts, poll_request
from bench.fleetsim.http import Connection
from bench.fleetsim.poller import keep_polling
from bench.fleetsim.stats import Recorder
from bench.fleetsim.timers import Wheel
from endpoint_agent.clock import SystemClock
from endpoint_agent.sync.schedule import PollSchedule


@dataclass
class Context:
    worker: int
    procs: int
    report: Callable[[str, Recorder], None]
    stopped: Callable[[], bool]
    begin: Callable[[], Awaitable[bool]]  # after preparing: wait for the common start (False: stop)

    def my_hosts(self, params: dict[str, Any], indices: range, rng: random.Random) -> list[SimHost]:
        """This process's share of the hosts `indices`."""
        mine = [i for i in indices if i % self.procs == self.worker]
        return make_hosts(mine, seed=params["seed"], seeded=params["seeded"], rng=rng)


def _server(params: dict[str, Any]) -> Server:
    return Server("127.0.0.1", params["port"], params["enroll_secret"])


async def _sleep_until(when: float, ctx: Context) -> bool:
    """Sleep until monotonic `when`; False if the driver asked to stop meanwhile."""
    while (left := when - time.monotonic()) > 0:
        if ctx.stopped():
            return False
        await asyncio.sleep(min(left, 0.25))
    return not ctx.stopped()


async def ramp(ctx: Context, params: dict[str, Any]) -> None:
    """params: steps [(hosts, seconds)], warmup (s), seed, seeded (already enrolled and running),
    etag, intervals. At each step's start the fleet grows to its size (new hosts' first contact
    spread over one interval, as if booted earlier); `warmup` seconds later (one interval: every
    new host has been seen once, the server's caches hold it) the step is measured for its
    seconds. Results: "warmup K" (not judged) and "K", the step's index."""
    loop = asyncio.get_running_loop()
    rng = random.Random(params["seed"] * 1000 + ctx.worker)
    steps: list[tuple[int, float]] = params["steps"]
    warmup: float = params.get("warmup", 0.0)
    recorder = Recorder()
    fleet = Fleet(
        loop, _server(params), recorder, rng=rng,
        sync_interval=params["sync_interval"], upload_interval=params["upload_interval"],
    )  # fmt: skip
    growth, active = [], 0
    for size, _seconds in steps:
        growth.append(ctx.my_hosts(params, range(active, size), rng))
        active = max(active, size)
        if params["seeded"]:  # a running agent holds the current ETag (in memory, policy_sync.py)
            for host in growth[-1]:
                host.etag = params["etag"] or None
    offset = 0.0
    for k, (_size, seconds) in enumerate(steps):
        fleet.plan(growth[k], offset)
        offset += warmup + seconds
    gc.freeze()  # the fleet lives to the end: no collection need walk it again
    if not await ctx.begin():
        return
    boundary = time.monotonic()
    fleet.start()
    try:
        for k, (_size, seconds) in enumerate(steps):
            for label, span in ((f"warmup {k}", warmup), (str(k), seconds)):
                if not span:
                    continue
                boundary += span
                if not await _sleep_until(boundary, ctx):
                    return  # stopped: a step cut short says nothing
                fleet.recorder = Recorder()
                ctx.report(label, recorder)
                recorder = fleet.recorder
    finally:
        fleet.stop()
        await fleet.drain()
        for hosts in growth:
            fleet.close_idle(hosts)


async def polls(ctx: Context, params: dict[str, Any]) -> None:
    """Closed loop: `concurrency` keep-alive connections each polling (If-None-Match) for `seconds`,
    in callbacks (bench/fleetsim/poller.py), the next poll at once or after a pause of mean
    `think` seconds (a paced rate: about concurrency / think polls/s); a 429/503 pauses its
    connection for Retry-After."""
    loop = asyncio.get_running_loop()
    hosts, recorder, fleet = _pollers(ctx, params)
    requests = [poll_request(host) for host in hosts]
    conns = _share(params["concurrency"], ctx)
    watch = Wheel(loop, recorder)
    if not await ctx.begin():
        return
    await _meet_once(ctx, fleet, hosts)
    until = time.monotonic() + params["seconds"]
    watch.start()
    try:
        await asyncio.gather(*(
            keep_polling(
                loop, params["port"], requests, recorder, until=until, timeout=fleet.timeout,
                first=c * len(requests) // conns, wait_retry_after=True, think=params.get("think", 0.0),
                rng=random.Random(f"{params['seed']}:{ctx.worker}:{c}"),
            )
            for c in range(conns)
        ))  # fmt: skip
    finally:
        watch.stop()
    ctx.report("polls", recorder)


async def ingest(ctx: Context, params: dict[str, Any]) -> None:
    """Closed loop: `concurrency` keep-alive connections each posting batches of `batch` events."""
    loop = asyncio.get_running_loop()
    rng = random.Random(ctx.worker)
    hosts = ctx.my_hosts(params, range(params["hosts"]), rng)
    recorder = Recorder()
    fleet = Fleet(loop, _server(params), recorder, rng=rng, keepalive=0.0)
    headers = {"Content-Type": "application/json"}
    ahead = bodies_ahead(hosts, params, rng, _share(params["concurrency"], ctx))
    if not await ctx.begin():
        return

    async def upload(host: SimHost, conn: Connection) -> None:
        built = ahead.get(host.index)
        body = built.pop() if built else event_batch(host.hostname, params["batch"], rng)
        answer = await fleet.node_call(host, "events", b"POST", "/events", headers, body, conn)
        if answer.status == 200:
            recorder.events_acked += len(json.loads(answer.body).get("acked", ()))

    await _closed_loop(ctx, params, fleet, hosts, upload)
    ctx.report("ingest", recorder)


# Events/s the ingest step's bodies are built ahead for (1.5 x the larger target); past it, built when sent.
BODIES_AHEAD_RATE = 30_000


def bodies_ahead(
    hosts: list[SimHost], params: dict[str, Any], rng: random.Random, conns: int
) -> dict[int, list[bytes]]:
    """The ingest step's upload bodies, built before its clock starts (building a body of 500
    events costs ~2.7 ms, half the simulator's CPU per upload, taken from the server it measures):
    by host index, for the hosts `conns` connections of `_closed_loop` visit, in their order,
    enough for BODIES_AHEAD_RATE events/s over `seconds`."""
    per_conn = math.ceil(params["seconds"] * BODIES_AHEAD_RATE / params["batch"] / max(conns, 1))
    out: dict[int, list[bytes]] = {}
    for c in range(conns):
        i = c
        for _ in range(per_conn):
            i = (i + params["concurrency"]) % len(hosts)  # as _closed_loop steps
            host = hosts[i]
            out.setdefault(host.index, []).append(event_batch(host.hostname, params["batch"], rng))
    for built in out.values():
        built.reverse()  # popped from the end: the first built is sent first
    return out


async def _closed_loop(
    ctx: Context,
    params: dict[str, Any],
    fleet: Fleet,
    hosts: list[SimHost],
    request: Callable[[SimHost, Connection], Awaitable[None]],
) -> None:
    """This process's share of `concurrency` keep-alive connections, each sending `request` for
    the next host until `seconds` pass; a connection told to come back later (503/429) waits its
    Retry-After, as an agent would."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + params["seconds"]
    watch = Wheel(loop, fleet.recorder)
    watch.start()

    async def one(offset: int) -> None:
        conn: Connection | None = None
        i = offset
        while time.monotonic() < deadline and not ctx.stopped():
            if conn is None or not conn.usable:
                conn = await Connection.open(loop, "127.0.0.1", params["port"], timeout=fleet.timeout)
            i = (i + params["concurrency"]) % len(hosts)
            try:
                await request(hosts[i], conn)
            except Unavailable as exc:
                await asyncio.sleep(exc.retry_after or 0.0)
            except Exception:
                conn.close()
                raise
        if conn is not None:
            conn.close()

    try:
        await asyncio.gather(*(one(c) for c in range(_share(params["concurrency"], ctx))))
    finally:
        watch.stop()


async def enroll(ctx: Context, params: dict[str, Any]) -> None:
    """New machines enrolling for `seconds`, `concurrency` at a time; like the agent, a refused
    enrollment (429/503) is retried on the poll schedule, never sooner than Retry-After."""
    loop = asyncio.get_running_loop()
    rng = random.Random(ctx.worker)
    recorder = Recorder()
    fleet = Fleet(loop, _server(params), recorder, rng=rng, keepalive=0.0)
    if not await ctx.begin():
        return
    deadline = time.monotonic() + params["seconds"]
    counter = iter(range(ctx.worker, 10**9, ctx.procs))
    clock = SystemClock()

    async def one() -> None:
        while time.monotonic() < deadline and not ctx.stopped():
            i = next(counter)
            host = SimHost(i, f"enroll-{params['seed']}-{i}", f"new-{i:06d}", noisy=False)
            schedule = PollSchedule(60.0, clock=clock, rng=rng)
            while time.monotonic() < deadline and not ctx.stopped():
                try:
                    await fleet.enroll(host)
                    break
                except Unavailable as exc:
                    await asyncio.sleep(min(schedule.failed(exc.retry_after), deadline - time.monotonic()))

    watch = Wheel(loop, recorder)
    watch.start()
    try:
        await asyncio.gather(*(one() for _ in range(_share(params["concurrency"], ctx))))
    finally:
        watch.stop()
    ctx.report("enroll", recorder)


async def overload(ctx: Context, params: dict[str, Any]) -> None:
    """More polls than the server can answer, cheaply: `conns` connections (this process's share),
    each sending a poll, waiting for its answer (at most `timeout` s), then another after a random
    pause of mean `think` s, for `seconds`: `conns / think` polls/s offered while the server
    answers at once. A share `fresh` of the connections are new for every poll, as an agent's at
    the default intervals; the others are kept alive (bench/fleetsim/poller.py). Retry-After is
    counted, not waited: the next poll of a connection stands for another agent arriving."""
    loop = asyncio.get_running_loop()
    rng = random.Random(params["seed"] + ctx.worker)
    hosts, recorder, fleet = _pollers(ctx, params)
    fleet.timeout = timeout = params["timeout"]
    requests = [poll_request(host) for host in hosts]
    conns, think = _share(params["conns"], ctx), params["think"]
    fresh = round(conns * params["fresh"])
    watch = Wheel(loop, recorder)
    if not await ctx.begin():
        return
    await _meet_once(ctx, fleet, hosts)
    until = time.monotonic() + params["seconds"]

    async def kept(first: int) -> None:
        await asyncio.sleep(rng.uniform(0, think))  # arrivals spread, not all at the start
        await keep_polling(
            loop, params["port"], requests, recorder, until=until, timeout=timeout, first=first,
            think=think, rng=rng,
        )  # fmt: skip

    async def new_each_time(first: int) -> None:
        i = first
        await asyncio.sleep(rng.uniform(0, think))
        while time.monotonic() < until and not ctx.stopped():
            with contextlib.suppress(Unavailable):  # counted by the recorder
                await fleet.poll_policy(hosts[i % len(hosts)])
            i += 1
            await asyncio.sleep(min(rng.expovariate(1.0 / think), max(0.0, until - time.monotonic())))

    watch.start()
    try:
        spread = len(requests) // max(conns, 1)
        await asyncio.gather(
            *(new_each_time(c * spread) for c in range(fresh)),
            *(kept(c * spread) for c in range(fresh, conns)),
        )
    finally:
        watch.stop()
    ctx.report("overload", recorder)


async def _meet_once(ctx: Context, fleet: Fleet, hosts: list[SimHost]) -> None:
    """Each host polls once, not measured (reported as "warmup"): the server then knows their
    node keys, as a server that has run a while knows its fleet's."""
    measured, fleet.recorder = fleet.recorder, Recorder()

    async def worker(k: int) -> None:
        for host in hosts[k::32]:
            with contextlib.suppress(Unavailable):  # the measured part will tell
                await fleet.poll_policy(host)

    await asyncio.gather(*(worker(k) for k in range(32)))
    ctx.report("warmup", fleet.recorder)
    fleet.recorder = measured


def _pollers(ctx: Context, params: dict[str, Any]) -> tuple[list[SimHost], Recorder, Fleet]:
    """This process's hosts, holding the current ETag, on a fleet that records into a new Recorder."""
    rng = random.Random(ctx.worker)
    hosts = ctx.my_hosts(params, range(params["hosts"]), rng)
    for host in hosts:
        host.etag = params["etag"]
    recorder = Recorder()
    # keepalive 0: a poll not sent on a kept connection opens one of its own (the overload's fresh tenth)
    return hosts, recorder, Fleet(None, _server(params), recorder, rng=rng, keepalive=0.0)


def _share(total: int, ctx: Context) -> int:
    return total // ctx.procs + (1 if ctx.worker < total % ctx.procs else 0)


SCENARIOS = {"ramp": ramp, "polls": polls, "ingest": ingest, "enroll": enroll, "overload": overload}

__all__ = ["SCENARIOS", "Context"]
