"""Fleet scale: simulated agents against the real server, on this machine.

    python -m bench.fleet --hosts 20000 --duration 120 [--db postgresql://...] [--fresh]
    python -m bench fleet                      # the targets below, ~10 minutes
    python -m bench fleet --fleet-steps poll,overload --fleet-seconds 5    # one or two steps, ~1 min
    python -m bench fleet --fleet-steps steady --fleet-hosts 20000,40000 --fleet-step-seconds 30

The server runs as its own process (`endpoint-server serve` under uvicorn on 127.0.0.1; SQLite,
or a throwaway PostgreSQL database with --db, dropped afterwards); simulated agents
(bench/fleetsim/agent.py) talk to it over loopback the way the real agent does. The simulator
shares the machine's cores with the server, so the server's CPU is measured (psutil) and the
figures are per server core used. Everything started is stopped on the way out.

The `fleet` benchmark measures, on one server:
- 304 policy polls: 200 keep-alive connections polling with If-None-Match as fast as answered
  (the throughput: >= 3,000/s per server core), then offering 3,000/s (each connection pausing
  between polls): p99 <= 50 ms;
- enrollment of new machines with the default rate limits: >= 1,000/s;
- ingest: events/s in batches of 500 (>= 20,000) and of 50 (>= 8,000), on PostgreSQL;
- steady state: a fleet at the default intervals (60 s), grown step by step until a step no
  longer holds (p95 > 100 ms, timeouts, errors); each size is measured after one interval in
  which its new hosts met the server once (a server that has run a while knows its fleet); the
  largest that held, per server core it used: >= 50,000 hosts per server core. Then, as the
  sizes double, up to --fleet-refine sizes between the largest that held and the first that did
  not (each a run of its own after the server settled): the figure is the largest fleet that
  held, not the last power of two below it. When the first size does not hold, up to
  --fleet-refine halves of it are measured first, until one holds. A step in which the
  simulator fell behind its own schedule is inconclusive, not a server failure (nor a size
  that held);
- overload: 1,000 keep-alive connections (a tenth of the polls on new ones) offering 2.5 times
  the measured poll rate, a strict 5 s timeout: every poll answered (503 + Retry-After at once,
  p95 <= 100 ms), none timed out.

Every result prints CPU per request of the server, the database and the simulator, how late
the simulator ran its own timers, how busy the machine was (and with what else; the CPU the
hypervisor took, steal), the server's major page faults, the kernel's accept-queue drops and
SYN retransmits, and the server's event-loop stalls over 50 ms as its stall watch logged them
(server_stub/stallwatch.py: where the loop thread was, and whether it ran, waited for a CPU or
was blocked, and why: a collection, steal, page faults). A step that did not hold while other
processes used the CPU (the benchmark runs niced) or the hypervisor took it, or while the
server's pages were read back from disk, is inconclusive too. Simulated machines connect from addresses of
their own and keep their connection as the agent's client does (bench/fleetsim/agent.py).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fleetsim.driver import loop_name, run_workers
from bench.fleetsim.server import STALL_MS, CpuMeter, CpuSample, RunningServer, serving, wait_idle
from bench.fleetsim.stalls import StallLog, StallSummary
from bench.fleetsim.stats import ERROR, SLOW, TIMEOUT, KindStats, Recorder, outcome_text
from bench.report import Target, targets_block

SUMMARY = (
    "fleet simulator: 304 polls, enrollment, ingest, hosts per server core at default intervals, overload"
)
SHARED = "the simulator shares this machine's {cores} cores with the server"
POLL_PER_CORE = 3000.0
POLL_P99 = 0.050
ENROLL_RATE = 1000.0
INGEST_500 = 20_000.0
INGEST_50 = 8_000.0
HOSTS_PER_CORE = 50_000.0
STEADY_P95 = 0.100
OVERLOAD_P95 = 0.100
REQ_PER_HOST_S = 2.1 / 60  # a policy poll and a heartbeat a minute, and uploads from the noisy tenth
SEED = 7
STEPS = ("poll", "enroll", "ingest", "steady", "overload")
SMALL_FLEET = 5000  # hosts seeded when the steady state is not run
POLL_CONNS = 200  # keep-alive connections of the poll step
POLL_HOSTS = 1000  # hosts of the poll and overload steps: each polls once before the measure (warm)
STEADY_FIRST = 5000  # the steady state's first size when no poll rate was measured
STEADY_LEAST = 500  # the smallest steady-state fleet measured
OVERLOAD_RATE = 4000.0  # polls/s offered in overload when no poll rate was measured
OVERLOAD_CONNS = 1000  # keep-alive connections offering the overload
OVERLOAD_FRESH = 0.1  # the share of overload polls on a new connection each
OVERLOAD_TIMEOUT = 5.0  # strict: an overloaded server must answer at once, not in 15 s
BUSY_PROCS = 2  # simulator processes for the steady state and overload (one could lag on its own)
LAG_P99 = 0.050  # the simulator's timers later than this (p99), or
LAG_MAX = 1.0  # than this once: it measured itself, not the server
OTHERS_MAX = 0.25  # cores used by other processes past which a failed step is inconclusive
PAGE_INS_MAX = 100  # the server's major page faults in a step past which a failed one is inconclusive
REFINE_STEPS = 2  # steady state: sizes tried between the largest that held and the first that did not
REFINE_CLOSE = 1.15  # ... while the first that did not is more than this many times the one that held


# -- printing ----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"


def kind_lines(rec: Recorder, seconds: float) -> list[str]:
    rows = [f"    {'kind':<10} {'req/s':>9} {'p50':>9} {'p95':>9} {'p99':>9}  outcomes"]
    for kind in sorted(rec.kinds):
        stats = rec.kinds[kind]
        rows.append(
            f"    {kind:<10} {stats.count / seconds:>9,.1f} {_ms(stats.percentile(0.5)):>9}"
            f" {_ms(stats.percentile(0.95)):>9} {_ms(stats.percentile(0.99)):>9}"
            f"  {outcome_text(stats.outcomes)}"
        )
    return rows


def cpu_line(cores: tuple[float, float, float], span: float, requests: int) -> str:
    """Cores used, and CPU per request of each: the simulator's share shows what it took from the
    server on these shared cores."""
    server, db, sim = cores
    line = f"    CPU (cores): server {server:.2f}, database {db:.2f}, simulator {sim:.2f}"
    if requests:
        us = span / requests * 1e6
        line += (
            f"; per request: server {server * us:,.0f} us, database {db * us:,.0f} us, "
            f"simulator {sim * us:,.0f} us"
        )
        if server > 0:
            line += f" ({sim / server:.2f} of the server's)"
    return line


def lag_line(rec: Recorder) -> str:
    lag = rec.lag
    verdict = " -- LAGGED: its figures are its own, not the server's" if lagged(rec) else ""
    return (
        f"    simulator lag behind its own schedule: p99 {_ms(lag.percentile(0.99))}, "
        f"max {_ms(lag.max())}{verdict}"
    )


def lagged(rec: Recorder) -> bool:
    """The simulator ran late on its own timers: its latencies and rates measure itself."""
    return bool(rec.lag.n) and (rec.lag.percentile(0.99) > LAG_P99 or rec.lag.max() > LAG_MAX)


def report_lines(rec: Recorder, span: float, cores: tuple[float, float, float]) -> str:
    count = rec.all().count
    lines = [*kind_lines(rec, span), cpu_line(cores, span, count), lag_line(rec)]
    if rec.connections and count:
        lines.append(
            f"    new connections: {rec.connections:,} ({rec.connections / count:.0%} of the requests; "
            f"the others reused one, as the agent's client does within 5 s); {rec.slow_connects:,} of "
            "them waited a second or more for the handshake (a SYN dropped, sent again)"
        )
        shake, kept = rec.handshakes, rec.reused
        lines.append(
            f"    handshake of a new connection: p50 {_ms(shake.percentile(0.5))}, p95 "
            f"{_ms(shake.percentile(0.95))}, max {_ms(shake.max() if shake.n else math.nan)}; "
            f"a request on a kept connection: p50 {_ms(kept.percentile(0.5))}, p95 "
            f"{_ms(kept.percentile(0.95))}, p99 {_ms(kept.percentile(0.99))}"
        )
    if rec.slow:
        when = ", ".join(
            f"{time.strftime('%H:%M:%S', time.localtime(t))}.{int(t % 1 * 1000):03d} {kind} {secs:.2f} s"
            for t, kind, secs in rec.slow[:5]
        )
        lines.append(f"    first requests slower than {SLOW:g} s: {when}")
    return "\n".join(lines)


def others_cores(bench: Bench, label: str) -> float:
    """Cores used by processes other than the server, its database and the simulator, and taken
    by the hypervisor (steal: this machine's vCPUs not run at all)."""
    if label not in bench.context:
        return 0.0
    earlier, now, _stalls = bench.context[label]
    return now.others_since(earlier) + now.steal_since(earlier)


def page_ins(bench: Bench, label: str) -> int:
    """The server's major page faults (pages read back from disk) while `label` ran."""
    if label not in bench.context:
        return 0
    earlier, now, _stalls = bench.context[label]
    return now.server_majflt - earlier.server_majflt


def context_lines(bench: Bench, label: str) -> str:
    """The machine, the kernel's drops and the server's event-loop stalls while `label` ran."""
    if label not in bench.context:
        return ""
    earlier, now, stalls = bench.context[label]
    lines = [now.machine_line(earlier), now.threads_line(earlier), stalls.line(STALL_MS)]
    lines += [f"      {text}" for _ms, text in stalls.worst]
    return "\n".join(lines)


# -- one measured run ----------------------------------------------------------------------------


class Bench:
    """One server and its meter; scenarios run in simulator processes while the CPU is sampled."""

    def __init__(self, srv: RunningServer, procs: int, *, busy_procs: int | None = None) -> None:
        self.srv = srv
        self.procs = procs
        self.busy_procs = busy_procs or procs  # for the steady state and overload
        self.meter = CpuMeter(srv.pid, srv.pg_database)
        self.stalls = StallLog(srv.log_path)
        # label -> what surrounded the server while that result was measured (context_lines)
        self.context: dict[str, tuple[CpuSample, CpuSample, StallSummary]] = {}

    def params(self, **extra: Any) -> dict[str, Any]:
        return {
            "port": self.srv.port, "enroll_secret": self.srv.enroll_secret, "etag": self.srv.etag,
            "seed": SEED, "seeded": True, **extra,
        }  # fmt: skip

    def run(
        self, scenario: str, params: dict[str, Any], *, procs: int | None = None,
        on_result: Callable[[str, Recorder, tuple[float, float, float], float], bool] | None = None,
    ) -> tuple[dict[str, Recorder], tuple[float, float, float], float]:  # fmt: skip
        """Run; returns results, (server, db, sim) cores over the whole run, and its wall seconds."""
        marks: list[CpuSample] = []

        def started(pids: list[int], t0: float) -> None:
            self.meter.add_sim(pids)
            time.sleep(max(0.0, t0 - time.monotonic()))  # the simulator starts then
            marks.append(self.meter.sample())
            self.stalls.since_last()  # what the server logged before: not this run's

        def judged(label: str, rec: Recorder) -> bool:
            now = self.meter.sample()
            self.context[label] = (marks[-1], now, self.stalls.since_last())
            cores = now.cores_since(marks[-1])
            span = now.wall - marks[-1].wall
            marks.append(now)
            return on_result(label, rec, cores, span) if on_result else True

        results = run_workers(scenario, params, procs=procs or self.procs, on_result=judged, on_start=started)
        end = self.meter.sample()
        return results, end.cores_since(marks[0]), end.wall - marks[0].wall

    def measured(
        self, scenario: str, params: dict[str, Any], label: str, *, procs: int | None = None
    ) -> tuple[Recorder, tuple[float, float, float], float]:
        """Run; the result `label`, the cores used while it was measured (not during a warm-up
        reported before it) and its wall seconds."""
        got: dict[str, tuple[tuple[float, float, float], float]] = {}

        def keep(name: str, rec: Recorder, cores: tuple[float, float, float], span: float) -> bool:
            got[name] = (cores, span)
            return True

        results, cores, span = self.run(scenario, params, procs=procs, on_result=keep)
        cores, span = got.get(label, (cores, span))
        return results[label], cores, span


HELD, FAILED = "held", "DID NOT HOLD"
SIM_LAGGED = "INCONCLUSIVE (the simulator lagged)"
MACHINE_BUSY = "INCONCLUSIVE (other processes or the hypervisor took the CPU)"
PAGED_IN = "INCONCLUSIVE (the server's memory was paged in from disk)"


def step_verdict(rec: Recorder, others: float = 0.0, page_ins: int = 0) -> tuple[str, str]:
    """HELD, FAILED (the server missed: timeouts, errors, refusals, p95), SIM_LAGGED (the
    simulator fell behind its schedule) or MACHINE_BUSY (a step that did not hold while processes
    other than the server, its database and the simulator used, or the hypervisor took, `others`
    > OTHERS_MAX cores: this benchmark runs niced, so they had the CPU first), or PAGED_IN (one that
    did not hold while the server waited for more than PAGE_INS_MAX of its pages to be read back
    from disk: this machine's memory reclaim, not the server's work): the step then says nothing
    of the server."""
    total = rec.all()
    if not total.count:
        return FAILED, "no requests"
    if lagged(rec):
        return SIM_LAGGED, f"simulator timers p99 {_ms(rec.lag.percentile(0.99))} late"
    verdict, why = _server_verdict(rec, total)
    if verdict != HELD and others > OTHERS_MAX:
        return MACHINE_BUSY, f"{why}, while other processes and the hypervisor took {others:.2f} cores"
    if verdict != HELD and page_ins > PAGE_INS_MAX:
        return PAGED_IN, f"{why}, while {page_ins:,} of the server's pages were read back from disk"
    return verdict, why


def _server_verdict(rec: Recorder, total: KindStats) -> tuple[str, str]:
    failed = rec.count(TIMEOUT) + rec.count(ERROR)
    refused = sum(n for o, n in total.outcomes.items() if isinstance(o, int) and (o == 429 or o >= 500))
    p95 = total.percentile(0.95)
    if failed > 0.001 * total.count:
        return FAILED, f"{failed} timeouts/connection errors"
    if refused > 0.01 * total.count:
        return FAILED, f"{refused} requests refused (429/5xx)"
    if p95 > STEADY_P95:
        return FAILED, f"p95 {_ms(p95)} > {_ms(STEADY_P95)}"
    return HELD, f"p95 {_ms(p95)}"


def ramp(
    bench: Bench, steps: list[tuple[int, float]], *, seeded: bool, intervals: tuple[float, float],
    warmup: float, stop_on_failure: bool,
) -> list[tuple[int, Recorder, tuple[float, float, float], str]]:  # fmt: skip
    """Grow the fleet through `steps`, each measured after `warmup` seconds; prints each step;
    (hosts, recorder, cores, verdict) per step run."""
    out: list[tuple[int, Recorder, tuple[float, float, float], str]] = []

    def judged(label: str, rec: Recorder, cores: tuple[float, float, float], span: float) -> bool:
        if label.startswith("warmup"):
            return True  # new hosts met once: not measured
        hosts = steps[int(label)][0]
        verdict, why = step_verdict(rec, others_cores(bench, label), page_ins(bench, label))
        server_cores = cores[0]
        per_core = hosts / server_cores if server_cores > 0 else math.inf
        total = rec.all()
        print(
            f"  {hosts:,} hosts for {span:.0f} s: {total.count / span:,.0f} req/s, "
            f"{rec.events_acked / span:,.0f} events/s stored; {why}; "
            f"{per_core:,.0f} hosts per server core -- {verdict}",
            flush=True,
        )
        print(report_lines(rec, span, cores), flush=True)
        print(context_lines(bench, label), flush=True)
        out.append((hosts, rec, cores, verdict))
        return verdict == HELD or not stop_on_failure

    params = bench.params(
        steps=steps, seeded=seeded, warmup=warmup,
        sync_interval=intervals[0], upload_interval=intervals[1],
    )  # fmt: skip
    bench.run("ramp", params, on_result=judged, procs=bench.busy_procs)
    return out


def between(held: int, failed: int, close: float = REFINE_CLOSE) -> int | None:
    """The next size to try between a size that held and a larger one that did not (the
    geometric middle: the ramp grows by factors), or None once they are within `close`."""
    if failed <= held * close:
        return None
    exact = math.sqrt(held * failed)
    middle = int(round(exact, -2)) or round(exact)
    return middle if held < middle < failed else None


def refine(
    held: int, failed: int, measure: Callable[[int, int, int], str], tries: int
) -> list[tuple[int, str]]:
    """Sizes between `held` and `failed`, each measured (`measure(size, held, failed)` -> verdict,
    with the bounds it lies between): one that held
    raises the lower bound, any other verdict (failed, or inconclusive: not known to hold) lowers
    the upper one; at most `tries`. (size, verdict) per size measured."""
    out: list[tuple[int, str]] = []
    for _ in range(tries):
        size = between(held, failed)
        if size is None:
            break
        verdict = measure(size, held, failed)
        out.append((size, verdict))
        if verdict == HELD:
            held = size
        else:
            failed = size
    return out


def descend(
    failed: int, measure: Callable[[int, int], str], tries: int, least: int = STEADY_LEAST
) -> list[tuple[int, str]]:
    """When the ramp's FIRST size did not hold there is no lower bound to refine from: halves of
    it, each measured (`measure(size, failed)` -> verdict), until one holds; at most `tries`,
    never below `least`. (size, verdict) per size measured."""
    out: list[tuple[int, str]] = []
    for _ in range(tries):
        size = int(round(failed / 2, -2)) or failed // 2
        if size < least:
            break
        verdict = measure(size, failed)
        out.append((size, verdict))
        if verdict == HELD:
            break
        failed = size
    return out


# -- the benchmark ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fleet")
    g.add_argument("--fleet-db", help="PostgreSQL URL (default: $ENDPOINT_TEST_PG_URL); 'sqlite' for SQLite")
    g.add_argument(
        "--fleet-procs", type=int,
        help="simulator processes (default: 1, and 2 for the steady state and overload, the busiest)",
    )  # fmt: skip
    g.add_argument(
        "--fleet-steady-seconds", type=float, default=360, help="time for the steady-state ramp (360)"
    )
    g.add_argument("--fleet-step-seconds", type=float, default=30, help="measured seconds per ramp step (30)")
    g.add_argument(
        "--fleet-warmup-seconds", type=float, default=60,
        help="before each ramp step is measured, its new hosts meet the server once (60: one interval)",
    )  # fmt: skip
    g.add_argument("--fleet-max-hosts", type=int, default=200_000, help="largest simulated fleet (200,000)")
    g.add_argument(
        "--fleet-refine", type=int, default=REFINE_STEPS, metavar="N",
        help="steady state: after the ramp, up to N sizes between the largest that held and the first "
        "that did not, each a run of its own (and up to N halves first when the first size did not "
        f"hold) (default {REFINE_STEPS}; 0: none)",
    )  # fmt: skip
    g.add_argument(
        "--fleet-steps", default=",".join(STEPS), metavar="STEP,...",
        help=f"which steps to run, in this order (default: all: {','.join(STEPS)}); e.g. "
        "--fleet-steps poll,overload to measure a server change in a minute or two",
    )  # fmt: skip
    g.add_argument(
        "--fleet-seconds", type=float, default=10.0,
        help="seconds of each poll, enroll and ingest measurement (10); overload runs 1.5 times as long",
    )  # fmt: skip
    g.add_argument(
        "--fleet-hosts", metavar="N,...",
        help="steady state: these fleet sizes instead of doubling from what the poll rate suggests",
    )  # fmt: skip
    g.add_argument(
        "--fleet-overload-rate", type=float,
        help="overload: polls per second offered (default: 2.5 x the measured poll rate, at least 4,000)",
    )  # fmt: skip
    g.add_argument(
        "--fleet-server-arg", action="append", default=[], metavar="ARG",
        help="extra argument for `endpoint-server serve` (repeat), e.g. --fleet-server-arg=--workers=2",
    )  # fmt: skip


def _db_choice(value: str | None) -> str | None:
    url = value or os.environ.get("ENDPOINT_TEST_PG_URL")
    return None if not url or url == "sqlite" else url


def chosen_steps(text: str) -> list[str]:
    """The steps named in `--fleet-steps` (comma-separated), in the order given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STEPS]
    if unknown or not names:
        raise ValueError(f"--fleet-steps: {', '.join(unknown) or 'none'}; choose from {','.join(STEPS)}")
    return names


def fleet_sizes(text: str | None, max_hosts: int) -> list[int] | None:
    """The sizes of `--fleet-hosts` (comma-separated, 1..max_hosts, increasing), or None."""
    if not text:
        return None
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--fleet-hosts: not a list of numbers: {text[:80]!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > max_hosts:
        raise ValueError(f"--fleet-hosts: sizes from 1 to --fleet-max-hosts ({max_hosts:,})")
    return sizes


def run(args: argparse.Namespace) -> list[Target]:
    from bench.load import raise_nofile_limit

    try:
        steps = chosen_steps(args.fleet_steps)
        sizes = fleet_sizes(args.fleet_hosts, args.fleet_max_hosts)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    raise_nofile_limit(65536)
    db_url = _db_choice(args.fleet_db)
    cores = os.cpu_count() or 1
    # Seed only what the chosen steps use: 200,000 hosts take a while to write.
    seeded = SMALL_FLEET
    if "steady" in steps:
        seeded = max(seeded, sizes[-1] if sizes else args.fleet_max_hosts)
    procs = f"{args.fleet_procs}" if args.fleet_procs else f"1 ({BUSY_PROCS} for steady state and overload)"
    print(f"  {SHARED.format(cores=cores)}; simulator: {procs} process(es) on {loop_name()}")
    with (
        tempfile.TemporaryDirectory(prefix="ea-bench-fleet-") as tmp,
        serving(
            Path(tmp), db_url=db_url, seed_hosts_n=seeded, seed=SEED, extra_args=args.fleet_server_arg
        ) as srv,
    ):
        print(f"  server: endpoint-server serve {' '.join(args.fleet_server_arg)} on {srv.db_kind}, "
              f"{seeded:,} hosts enrolled before the run; steps: {','.join(steps)}", flush=True)  # fmt: skip
        bench = Bench(srv, args.fleet_procs or 1, busy_procs=args.fleet_procs or BUSY_PROCS)
        seconds = args.fleet_seconds
        targets: list[Target] = []
        poll_rate: float | None = None
        for step in steps:
            if step == "poll":
                got, poll_rate = _polls(bench, seconds)
            elif step == "enroll":
                got = _enroll(bench, seconds)
            elif step == "ingest":
                got = _ingest(bench, srv.db_kind, seconds)
            elif step == "steady":
                got = _steady(bench, args, poll_rate, sizes)
            else:
                rate = args.fleet_overload_rate or (2.5 * poll_rate if poll_rate else OVERLOAD_RATE)
                got = _overload(bench, rate, 1.5 * seconds)
            targets += got
    print(targets_block(targets))
    return targets


def _polls(bench: Bench, seconds: float) -> tuple[list[Target], float]:
    """Throughput: 200 connections polling as fast as the server answers (a closed loop: the
    server saturated, each poll waits behind the others, so its latency is ~200 / rate by
    Little's law and says how fast, not how promptly). Latency: the same 200 connections, each
    pausing between polls so that POLL_PER_CORE polls/s are offered -- the target's rate -- and
    its p99 is the target's ("p99 at 200 concurrent")."""
    params = bench.params(hosts=POLL_HOSTS, concurrency=POLL_CONNS, seconds=seconds)
    rec, cores, _span = bench.measured("polls", params, "polls")
    stats = rec.kinds.get("policy")
    n304 = stats.outcomes.get(304, 0) if stats else 0
    rate = n304 / seconds
    per_core = rate / cores[0] if cores[0] > 0 else 0.0
    p99_closed = stats.percentile(0.99) if stats else math.nan
    print(f"  304 policy polls, {POLL_CONNS} keep-alive connections as fast as answered, {seconds:.0f} s: "
          f"{rate:,.0f}/s, {per_core:,.0f}/s per server core (p99 {_ms(p99_closed)}: at saturation a poll "
          f"waits behind the others, {POLL_CONNS} / rate = {_ms(POLL_CONNS / max(rate, 1e-9))} on average)",
          flush=True)  # fmt: skip
    print(report_lines(rec, seconds, cores), flush=True)
    print(context_lines(bench, "polls"), flush=True)
    paced = bench.params(
        hosts=POLL_HOSTS, concurrency=POLL_CONNS, seconds=seconds, think=POLL_CONNS / POLL_PER_CORE
    )
    prec, pcores, _span = bench.measured("polls", paced, "polls")
    pstats = prec.kinds.get("policy")
    p99 = pstats.percentile(0.99) if pstats else math.nan
    answered = pstats.count if pstats else 0
    print(f"  304 policy polls, {POLL_CONNS} keep-alive connections paced at {POLL_PER_CORE:,.0f}/s "
          f"(each pausing {POLL_CONNS / POLL_PER_CORE * 1e3:.0f} ms on average between polls), "
          f"{seconds:.0f} s: {answered / seconds:,.0f}/s answered, p99 {_ms(p99)}", flush=True)  # fmt: skip
    print(report_lines(prec, seconds, pcores), flush=True)
    print(context_lines(bench, "polls"), flush=True)
    return [
        Target("3000 / 304 polls/s per server core", POLL_PER_CORE / max(per_core, 1e-9), 1.0),
        Target(
            f"304 poll p99 / 50 ms ({POLL_CONNS} concurrent, paced at {POLL_PER_CORE:,.0f}/s)",
            p99 / POLL_P99 if pstats else math.inf,
            1.0,
        ),
    ], rate


def _enroll(bench: Bench, seconds: float) -> list[Target]:
    results, cores, span = bench.run("enroll", bench.params(concurrency=200, seconds=seconds))
    rec = results["enroll"]
    stats = rec.kinds.get("enroll")
    done = stats.outcomes.get(200, 0) if stats else 0
    rate = done / span
    print(f"  enrollment, 200 new machines at a time, default rate limits: {rate:,.0f}/s "
          f"({rec.retry_after_seen} answers with Retry-After honoured)", flush=True)  # fmt: skip
    print(report_lines(rec, span, cores), flush=True)
    print(context_lines(bench, "enroll"), flush=True)
    return [Target("1000 / enrollments/s (default limits)", ENROLL_RATE / max(rate, 1e-9), 1.0)]


def _ingest(bench: Bench, db_kind: str, seconds: float) -> list[Target]:
    out = []
    for batch, goal in ((500, INGEST_500), (50, INGEST_50)):
        params = bench.params(hosts=2000, concurrency=8, batch=batch, seconds=seconds)
        results, cores, _span = bench.run("ingest", params)
        rec = results["ingest"]
        rate = rec.events_acked / seconds
        print(
            f"  ingest, batches of {batch}, 8 connections, {db_kind}: {rate:,.0f} events/s stored", flush=True
        )
        print(report_lines(rec, seconds, cores), flush=True)
        print(context_lines(bench, "ingest"), flush=True)
        out.append(
            Target(f"{goal:.0f} / events/s, batches of {batch} ({db_kind})", goal / max(rate, 1e-9), 1.0)
        )
    return out


def _steady(
    bench: Bench, args: argparse.Namespace, poll_rate: float | None, sizes: list[int] | None
) -> list[Target]:
    step_s, warmup = args.fleet_step_seconds, args.fleet_warmup_seconds
    if sizes is None:
        count = max(1, int(args.fleet_steady_seconds // (step_s + warmup)))
        # Start well below what the 304 rate suggests the server can carry (a fleet's requests,
        # on new connections, with heartbeats and uploads, cost several times a keep-alive 304),
        # and double: a ramp that fails at once says nothing of hosts per core.
        first = int(poll_rate / REQ_PER_HOST_S / 16) if poll_rate else STEADY_FIRST
        first = max(STEADY_LEAST, min(args.fleet_max_hosts, first))
        sizes = sorted({min(args.fleet_max_hosts, first * 2**k) for k in range(count)})
    print(f"  steady state at the default intervals (60 s): {', '.join(f'{n:,}' for n in sizes)} hosts, "
          f"each size measured for {step_s:.0f} s after {warmup:.0f} s in which its new hosts meet the "
          "server once; until one does not hold", flush=True)  # fmt: skip
    steps = ramp(
        bench, [(n, step_s) for n in sizes], seeded=True, intervals=(60.0, 60.0), warmup=warmup,
        stop_on_failure=True,
    )  # fmt: skip
    held = [(hosts, rec, cores) for hosts, rec, cores, verdict in steps if verdict == HELD]

    def alone(size: int, why: str) -> str:
        """One size, a run of its own (a new simulator; the server left to settle first)."""
        wait_idle(bench.srv.port)
        print(f"  steady state {why}: {size:,} hosts, a new fleet measured for {step_s:.0f} s after "
              f"{warmup:.0f} s", flush=True)  # fmt: skip
        got = ramp(
            bench, [(size, step_s)], seeded=True, intervals=(60.0, 60.0), warmup=warmup,
            stop_on_failure=True,
        )  # fmt: skip
        steps.extend(got)
        held.extend((h, r, c) for h, r, c, v in got if v == HELD)
        return got[-1][3] if got else FAILED

    tries = args.fleet_refine
    if not held and steps and tries > 0:
        # The first size (guessed from the 304 rate) did not hold: a ramp that fails at once says
        # nothing of hosts per core, so smaller fleets are measured until one holds.
        descend(steps[0][0], lambda size, high: alone(size, f"below {high:,} (did not hold)"), tries)
    largest = max((h[0] for h in held), default=0)
    not_held = [step[0] for step in steps if step[3] != HELD and step[0] > largest]
    if held and not_held and args.fleet_refine > 0:
        # Doubling jumps from a size that held to one that did not: what lies between is measured
        # too, each size a run of its own, so the figure is the largest fleet that held, not the
        # last power of two below it.
        refine(
            largest, min(not_held),
            lambda size, low, high: alone(size, f"between {low:,} hosts (held) and {high:,} (did not)"),
            args.fleet_refine,
        )  # fmt: skip
    held.sort(key=lambda entry: entry[0])
    # The smallest size that did not hold: what it says of the server's limit.
    missed = min((step for step in steps if step[3] != HELD), key=lambda step: step[0], default=None)
    if missed is not None and missed[3] == SIM_LAGGED:
        print(
            f"  the ramp stopped because the SIMULATOR lagged at {missed[0]:,} hosts, not the server: "
            "the server's limit is higher (more --fleet-procs, or less else on the machine)"
        )
    elif missed is not None and missed[3] in (MACHINE_BUSY, PAGED_IN):
        print(
            f"  the ramp stopped at {missed[0]:,} hosts while OTHER processes used the CPU (this "
            "benchmark runs niced) or the server's pages were read back from disk: what it says of the "
            "server is a lower bound; run it on a quiet machine"
        )
    if not held:
        print("  no step held")
        return [Target("50000 / hosts per server core (steady)", math.inf, 1.0)]
    hosts, rec, cores = held[-1]
    per_core = hosts / cores[0] if cores[0] > 0 else math.inf
    print(f"  largest fleet that held: {hosts:,} hosts, server {cores[0]:.2f} cores: {per_core:,.0f} hosts "
          f"per server core (p95 {_ms(rec.all().percentile(0.95))}); the simulator took "
          f"{cores[2]:.2f} cores, {cores[2] / max(cores[0], 1e-9):.2f} of the server's CPU per request",
          flush=True)  # fmt: skip
    return [
        Target("50000 / hosts per server core (steady)", HOSTS_PER_CORE / per_core, 1.0),
        Target("steady p95 / 100 ms (largest that held)", rec.all().percentile(0.95) / STEADY_P95, 1.0),
    ]


def _overload(bench: Bench, rate: float, seconds: float) -> list[Target]:
    wait_idle(bench.srv.port)
    rate = min(20_000.0, max(OVERLOAD_RATE, rate))
    params = bench.params(
        hosts=POLL_HOSTS, conns=OVERLOAD_CONNS, think=OVERLOAD_CONNS / rate, fresh=OVERLOAD_FRESH,
        timeout=OVERLOAD_TIMEOUT, seconds=seconds,
    )  # fmt: skip
    rec, cores, span = bench.measured("overload", params, "overload", procs=bench.busy_procs)
    stats = rec.kinds.get("policy")
    outcomes = stats.outcomes if stats else Counter()
    total = sum(outcomes.values())
    refused = outcomes.get(503, 0)
    timeouts, errors = outcomes.get(TIMEOUT, 0), outcomes.get(ERROR, 0)
    answered = sum(n for o, n in outcomes.items() if isinstance(o, int))
    p95_503 = stats.percentile(0.95, 503) if stats and refused else math.nan
    p95_all = stats.percentile(0.95) if stats else math.nan
    print(f"  overload: {OVERLOAD_CONNS:,} keep-alive connections ({OVERLOAD_FRESH:.0%} of polls on new) "
          f"offering {rate:,.0f} polls/s for {seconds:.0f} s, timeout {OVERLOAD_TIMEOUT:g} s: "
          f"{total:,} sent ({total / seconds:,.0f}/s); {outcomes.get(304, 0):,} answered 304, "
          f"{refused:,} answered 503 (p95 {_ms(p95_503)}, {rec.retry_after_seen:,} with Retry-After), "
          f"{answered - outcomes.get(304, 0) - refused:,} other answers, {timeouts:,} timed out, "
          f"{errors:,} connection errors; p95 of all {_ms(p95_all)}", flush=True)  # fmt: skip
    print(report_lines(rec, span, cores), flush=True)
    print(context_lines(bench, "overload"), flush=True)
    if not refused and p95_all <= OVERLOAD_P95 and not timeouts + errors:
        print("  (the server kept up: this offered load did not overload it; raise --fleet-overload-rate)")
    return [
        Target("overload: requests timed out or failed", timeouts + errors, 0),
        Target("overload: p95 of 503 answers / 100 ms", p95_503 / OVERLOAD_P95 if refused else math.inf, 1.0),
        Target("overload: p95 of all answers / 100 ms", p95_all / OVERLOAD_P95, 1.0),
    ]


# -- python -m bench.fleet -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, required=True, help="simulated hosts")
    p.add_argument("--duration", type=float, required=True, help="seconds to run")
    p.add_argument("--db", help="PostgreSQL URL to make a throwaway database on (default: SQLite)")
    p.add_argument("--procs", type=int, default=1, help="simulator processes (1)")
    p.add_argument("--fresh", action="store_true", help="every host enrolls first (default: enrolled before)")
    p.add_argument(
        "--sync-interval", type=float, default=60.0, help="policy poll interval (agent default 60)"
    )
    p.add_argument("--upload-interval", type=float, default=60.0, help="report interval (agent default 60)")
    p.add_argument(
        "--warmup", type=float, help="seconds before the measured duration (default: one sync interval)"
    )
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `endpoint-server serve` (repeat)")  # fmt: skip
    args = p.parse_args(argv)
    if not (1 <= args.hosts <= 1_000_000 and 0 < args.duration <= 3600 and 1 <= args.procs <= 16):
        p.error("--hosts 1..1,000,000, --duration up to 3600 s, --procs 1..16")
    from bench.load import raise_nofile_limit

    raise_nofile_limit(65536)
    cores = os.cpu_count() or 1
    print(f"fleet: {args.hosts:,} hosts for {args.duration:g} s; {SHARED.format(cores=cores)}; "
          f"simulator: {args.procs} process(es) on {loop_name()}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ea-fleet-") as tmp, serving(
        Path(tmp), db_url=args.db, seed_hosts_n=0 if args.fresh else args.hosts, seed=SEED,
        extra_args=args.server_arg,
    ) as srv:  # fmt: skip
        bench = Bench(srv, args.procs)
        steps = ramp(
            bench, [(args.hosts, args.duration)], seeded=not args.fresh,
            intervals=(args.sync_interval, args.upload_interval),
            warmup=args.sync_interval if args.warmup is None else args.warmup, stop_on_failure=False,
        )  # fmt: skip
    for hosts, _rec, cores_used, verdict in steps:
        per_core = hosts / cores_used[0] if cores_used[0] > 0 else math.inf
        print(f"fleet: {hosts:,} hosts, {per_core:,.0f} hosts per server core; "
              f"steady-state target (p95 <= 100 ms, no timeouts): {verdict}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nfleet: interrupted; everything it started was stopped", file=sys.stderr)
        sys.exit(130)
