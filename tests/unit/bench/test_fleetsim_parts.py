"""The fleet simulator's pieces: its HTTP client (against small servers on 127.0.0.1), the
latency histograms, the detection of a simulator that lags its own schedule, and the verdict
of a steady-state step."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import pickle
import random
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from bench.fleet import FAILED, HELD, MACHINE_BUSY, PAGED_IN, SIM_LAGGED, lagged, step_verdict
from bench.fleetsim.agent import Fleet, Server, Unavailable, make_hosts
from bench.fleetsim.http import Answer, Connection, Timeout, encode, exchange
from bench.fleetsim.stats import ERROR, TIMEOUT, Histogram, Recorder
from bench.fleetsim.timers import Wheel

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


# -- HTTP client -------------------------------------------------------------------------------


def test_encode_writes_the_request_as_sent() -> None:
    raw = encode(b"POST", "/api/v1/heartbeat", {"Authorization": "Bearer k"}, b"{}")
    assert raw == (
        b"POST /api/v1/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    assert b"Content-Length: 0" in encode(b"POST", "/x", {})  # an empty POST says so
    assert b"Content-Length" not in encode(b"GET", "/x", {})


def test_the_client_refuses_anything_but_loopback() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError, match="loopback only"):
            await Connection.open(loop, "192.0.2.1", 80, timeout=1.0)
        with pytest.raises(ValueError, match="loopback only"):
            await exchange(loop, "192.0.2.1", 80, b"GET / HTTP/1.1\r\n\r\n", timeout=1.0)

    asyncio.run(main())


def test_the_client_reads_chunked_and_split_answers() -> None:
    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            for piece in (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"x\"\r\n\r\n5\r\nhel",
                          b"lo\r\n6\r\n world\r\n0\r\n\r\n"):  # fmt: skip
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            writer.close()

        server, port = await _serve(answer)
        conn = await Connection.open(asyncio.get_running_loop(), "127.0.0.1", port, timeout=5.0)
        first = await conn.request(b"GET", "/a", {})
        assert (first.status, first.body, first.header(b"etag")) == (200, b"hello world", '"x"')
        second = await conn.send(encode(b"GET", "/b", {}))
        assert (second.status, second.body, second.header(b"retry-after")) == (503, b"{}", "7")
        with pytest.raises(ConnectionError):
            await conn.request(b"GET", "/c", {})
        conn.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_exchange_sends_on_a_new_connection_and_reads_the_whole_answer() -> None:
    seen: list[bytes] = []

    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            seen.append(head + body)
            big = b"x" * 200_000  # several reads
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big))
            for i in range(0, len(big), 50_000):
                writer.write(big[i : i + 50_000])
                await writer.drain()
            await reader.read()  # until the client closes
            writer.close()

        server, port = await _serve(answer)
        raw = encode(b"POST", "/events", {}, b"y" * 300_000)  # more than one send
        got = await exchange(asyncio.get_running_loop(), "127.0.0.1", port, raw, timeout=10.0)
        assert (got.status, len(got.body)) == (200, 200_000)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert seen == [encode(b"POST", "/events", {}, b"y" * 300_000)]


def test_exchange_fails_on_a_refused_port_a_silent_server_and_a_closed_connection() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]  # bound, not listening: refused
            with pytest.raises(ConnectionError):
                await exchange(loop, "127.0.0.1", closed_port, b"GET / HTTP/1.1\r\n\r\n", timeout=5.0)

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        server, port = await _serve(silent)
        started = time.monotonic()
        with pytest.raises(Timeout):
            await exchange(loop, "127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", timeout=0.3)
        assert time.monotonic() - started >= 0.3
        server.close()

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
            writer.close()

        server, port = await _serve(hang_up)
        with pytest.raises(ConnectionError, match="closed"):
            await exchange(loop, "127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n", timeout=5.0)
        server.close()

    asyncio.run(main())


def test_a_failed_request_is_recorded_by_kind_and_carries_retry_after() -> None:
    async def main() -> Recorder:
        async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n")
            writer.close()

        server, port = await _serve(busy)
        rec = Recorder()
        fleet = Fleet(None, Server("127.0.0.1", port, "x"), rec, timeout=5.0)
        answer = await fleet.call("policy", encode(b"GET", "/api/v1/policy", {}))
        with pytest.raises(Unavailable) as caught:
            fleet._raise_for_status(answer)
        assert caught.value.retry_after == 5.0
        server.close()
        await server.wait_closed()
        with pytest.raises(Unavailable):  # nobody listens any more
            await fleet.call("heartbeat", encode(b"POST", "/api/v1/heartbeat", {}))
        return rec

    rec = asyncio.run(main())
    assert rec.kinds["policy"].outcomes == {503: 1} and rec.retry_after_seen == 1
    assert rec.kinds["heartbeat"].outcomes == {ERROR: 1}


def test_a_host_reuses_its_connection_like_the_agents_client_until_the_server_closes_it() -> None:
    """As httpx with its default 5 s keep-alive against uvicorn: a request soon after the last one
    goes on the same connection; one the server closed (idle too long) or answered with
    `Connection: close` is not reused; one idle longer than the keep-alive is not either. Each
    simulated machine connects from an address of its own, as machines of a fleet do."""
    connections: list[str] = []  # the address each came from

    async def main() -> Recorder:
        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer.get_extra_info("peername")[0])
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    try:  # the server's own keep-alive timeout: 0.5 s here
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
                    except TimeoutError:
                        break
                    closing = b"/bye" in head
                    close = b"connection: close\r\n" if closing else b""
                    writer.write(b"HTTP/1.1 304 Not Modified\r\n%s\r\n" % close)
                    await writer.drain()
                    if closing:
                        break
            writer.close()

        server, port = await _serve(keep)
        rec = Recorder()
        fleet = Fleet(None, Server("127.0.0.1", port, "x"), rec, timeout=5.0, keepalive=5.0)
        host = make_hosts([0], seed=1, seeded=True, rng=random.Random(1))[0]
        poll = encode(b"GET", "/api/v1/policy", {})
        for _ in range(3):  # one connection for the three
            await fleet.call("policy", poll, host=host)
        assert (len(connections), rec.connections) == (1, 1)
        await asyncio.sleep(0.8)  # the server closed it meanwhile: a new one
        await fleet.call("policy", poll, host=host)
        assert (len(connections), rec.connections) == (2, 2)
        await fleet.call("policy", encode(b"GET", "/bye", {}), host=host)  # Connection: close
        await fleet.call("policy", poll, host=host)
        assert (len(connections), rec.connections) == (3, 3)
        fleet.keepalive = 0.1  # the client's own expiry, shorter than the server's
        await asyncio.sleep(0.2)
        await fleet.call("policy", poll, host=host)
        assert (len(connections), rec.connections) == (4, 4)
        fleet.close_idle([host])
        assert set(connections) == {host.address} and host.address.startswith("127.1.")  # its own
        server.close()
        await server.wait_closed()
        return rec

    rec = asyncio.run(main())
    assert rec.kinds["policy"].outcomes == {304: 7} and rec.all().count == 7


def test_an_answer_finds_its_headers() -> None:
    answer = Answer(304, b'http/1.1 304 not modified\r\netag: "v1"\r\nretry-after:  3 \r\n', b"")
    assert answer.header(b"etag") == '"v1"' and answer.header(b"retry-after") == "3"
    assert answer.header(b"content-type") is None


# -- histograms ---------------------------------------------------------------------------------


def test_histogram_percentiles_are_within_one_percent_of_the_exact_ones() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(-5, 1.5) for _ in range(20_000)] + [15.0] * 30
    hist = Histogram()
    for v in values:
        hist.add(v)
    ordered = sorted(values)
    for q in (0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]
        assert hist.percentile(q) == pytest.approx(exact, rel=0.011), q
    assert hist.n == len(values)


def test_histograms_merge_pickle_and_take_any_value() -> None:
    one, two, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 1001):
        (one if i % 2 else two).add(i / 1000)
        both.add(i / 1000)
    one.extend(two)
    assert list(one.counts) == list(both.counts) and one.n == both.n == 1000
    again = pickle.loads(pickle.dumps(one))
    assert list(again.counts) == list(one.counts) and again.percentile(0.5) == one.percentile(0.5)
    assert len(pickle.dumps(one)) < 20_000  # the same size at a million samples
    edge = Histogram()
    for v in (0.0, 1e-9, 1e9):
        edge.add(v)
    assert edge.percentile(0.0) <= 1e-6 and edge.max() >= 1e4
    assert math.isnan(Histogram().percentile(0.5))


def test_recorders_merge_and_give_percentiles_by_outcome() -> None:
    one, two = Recorder(), Recorder()
    for ms in range(1, 101):
        one.add("policy", 304, ms / 1000)
    two.add("policy", 503, 0.002)
    two.add("policy", TIMEOUT, 15.0)
    two.events_acked = 7
    two.late(0.5)
    merged = Recorder.merged([one, two])
    stats = merged.kinds["policy"]
    assert stats.outcomes == {304: 100, 503: 1, TIMEOUT: 1}
    assert stats.percentile(0.5, 304) == pytest.approx(0.050, rel=0.01)
    assert stats.percentile(0.99, 304) == pytest.approx(0.099, rel=0.01)
    assert stats.percentile(1.0) == pytest.approx(15.0, rel=0.01)
    assert stats.percentile(0.5, 503) == pytest.approx(0.002, rel=0.01)
    assert math.isnan(stats.percentile(0.5, 429))
    assert merged.count(TIMEOUT) == 1 and merged.events_acked == 7
    assert merged.late_max == pytest.approx(0.5, rel=0.01)


# -- the simulator's own lag, and a step's verdict ------------------------------------------------


def test_the_wheel_runs_jobs_in_time_order_counting_planned_ones_from_its_start() -> None:
    ran: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = Wheel(loop, Recorder(), every=0.01)
        wheel.after(0.10, lambda: ran.append(("b", loop.time() - wheel.origin)))
        wheel.after(0.05, lambda: ran.append(("a", loop.time() - wheel.origin)))
        await asyncio.sleep(0.2)  # planned, not started: nothing runs
        assert ran == [] and len(wheel) == 2
        wheel.start()
        wheel.at(loop.time() + 0.02, lambda: ran.append(("first", loop.time() - wheel.origin)))
        wheel.after(10.0, lambda: ran.append(("never", 0.0)))
        while len(ran) < 3:
            await asyncio.sleep(0.01)
        wheel.stop()
        assert len(wheel) == 0  # stopped: the rest is forgotten

    asyncio.run(main())
    assert [name for name, _ in ran] == ["first", "a", "b"]
    assert [at >= due for (_, at), due in zip(ran, (0.02, 0.05, 0.10), strict=True)] == [True] * 3


def test_the_wheel_records_how_late_a_busy_simulator_ran() -> None:
    rec = Recorder()

    async def main() -> None:
        wheel = Wheel(asyncio.get_running_loop(), rec, every=0.01)
        wheel.start()
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the simulator busy elsewhere: its timers (and sockets) wait
        await asyncio.sleep(0.05)
        wheel.stop()

    asyncio.run(main())
    assert rec.lag.n >= 2
    assert rec.late_max >= 0.25
    assert lagged(rec)


def _served(p95_ms: float, n: int = 1000) -> Recorder:
    rec = Recorder()
    for i in range(n):
        rec.add("policy", 304, p95_ms / 1000 if i >= n * 0.9 else 0.001)
    for _ in range(100):
        rec.late(0.001)
    return rec


def test_a_step_holds_fails_or_is_inconclusive_when_the_simulator_lagged_or_others_had_the_cpu() -> None:
    assert step_verdict(_served(20))[0] == HELD
    verdict, why = step_verdict(_served(300))
    assert verdict == FAILED and why.startswith("p95 ") and why.endswith("> 100.0 ms")
    timed_out = _served(20)
    for _ in range(5):
        timed_out.add("policy", TIMEOUT, 15.0)
    assert step_verdict(timed_out)[0] == FAILED and "timeouts" in step_verdict(timed_out)[1]
    refused = _served(20)
    for _ in range(50):
        refused.add("heartbeat", 503, 0.001)
    assert step_verdict(refused)[0] == FAILED
    # The same slow answers while the simulator's own timers ran 200 ms late: not the server's fault.
    lagging = _served(300)
    for _ in range(10):
        lagging.late(0.2)
    verdict, why = step_verdict(lagging)
    assert verdict == SIM_LAGGED and "simulator" in why
    assert step_verdict(Recorder())[0] == FAILED
    # Slow answers while other processes had the CPU (the benchmark runs niced): not a verdict
    # on the server either; a step that held still held.
    verdict, why = step_verdict(_served(300), others=0.8)
    assert verdict == MACHINE_BUSY and "0.80 cores" in why
    assert step_verdict(_served(20), others=0.8)[0] == HELD
    assert step_verdict(_served(300), others=0.1)[0] == FAILED
    # ... nor while the server waited for its pages to be read back from disk (memory reclaim).
    verdict, why = step_verdict(_served(300), page_ins=5000)
    assert verdict == PAGED_IN and "5,000 of the server's pages" in why
    assert step_verdict(_served(20), page_ins=5000)[0] == HELD
    assert step_verdict(_served(300), page_ins=3)[0] == FAILED


def test_the_machine_line_tells_the_hypervisors_steal_and_the_servers_page_ins_apart() -> None:
    from bench.fleetsim.server import CpuSample

    # 10 s: the machine busy 12 CPU-seconds, 6 of them ours; the hypervisor took 3 more.
    before = CpuSample(wall=100.0, server=10.0, db=5.0, sim=5.0, machine=50.0, steal=1.0, server_majflt=7)
    after = CpuSample(wall=110.0, server=14.0, db=6.0, sim=6.0, machine=62.0, steal=4.0, server_majflt=9)
    assert after.others_since(before) == pytest.approx(0.6)
    assert after.steal_since(before) == pytest.approx(0.3)
    line = after.machine_line(before)
    assert "0.60 of them by processes other than" in line
    assert "the hypervisor took 0.30 cores (steal)" in line and "2 major page faults" in line


def test_the_servers_cpu_is_told_by_thread_the_ones_it_named_by_their_names() -> None:
    """A background thread of the server names itself to the kernel (Periodic does, first
    thing): the bench's server-threads line shows its CPU under that name, the main thread's
    as "loop", threads left unnamed as "other"."""
    import os
    import threading

    from bench.fleetsim.server import CpuSample, _threads
    from server_stub.periodic import Periodic

    spun, release = threading.Event(), threading.Event()

    def spin() -> None:
        if not spun.is_set():
            end = time.thread_time() + 0.05  # CPU to count
            while time.thread_time() < end:
                pass
            spun.set()

    ticker = Periodic("rate-sync-test-with-a-long-name", 0.01, spin)
    unnamed = threading.Thread(target=release.wait, args=(10.0,), name="not given to the kernel")
    ticker.start()
    unnamed.start()
    try:
        assert spun.wait(10.0)
        seen = _threads(os.getpid())
    finally:
        release.set()
        ticker.stop()
        unnamed.join()
    names = {name for name, _cpu in seen.values()}
    assert {"loop", "rate-sync-test-", "other"} <= names  # the kernel keeps 15 bytes of a name
    assert next(cpu for name, cpu in seen.values() if name == "rate-sync-test-") >= 0.03

    before = CpuSample(wall=100.0, server=1.0, db=0.0, sim=0.0, server_threads=(("loop", 1.0), ("x", 0.5)))
    after = CpuSample(
        wall=110.0, server=6.0, db=0.0, sim=0.0, server_threads=(("loop", 5.0), ("other", 0.2), ("x", 1.5))
    )
    assert after.threads_line(before) == "    server threads (cores): loop 0.400, x 0.100, other 0.020"


def test_a_fleet_planned_before_its_start_first_calls_after_its_offset() -> None:
    from bench.fleetsim.agent import make_hosts

    calls: list[float] = []

    async def main() -> float:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                calls.append(time.monotonic())
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n")
            writer.close()

        server, port = await _serve(answer)
        rec = Recorder()
        fleet = Fleet(None, Server("127.0.0.1", port, "x"), rec, sync_interval=0.2, upload_interval=3600)
        hosts = make_hosts(range(3), seed=1, seeded=True, rng=random.Random(1))
        fleet.plan(hosts, offset=0.3)
        await asyncio.sleep(0.2)
        assert calls == []  # planned, the clock not started
        started = time.monotonic()
        fleet.start()
        while len(calls) < 6:
            await asyncio.sleep(0.02)
        fleet.stop()
        await fleet.drain()
        server.close()
        return started

    started = asyncio.run(main())
    assert min(calls) - started >= 0.3  # from the start, not from the plan


def test_keep_polling_records_every_answer_pauses_for_retry_after_and_reconnects() -> None:
    from bench.fleetsim.poller import keep_polling

    connections: list[int] = []

    async def main() -> Recorder:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            n = 0
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                n += 1
                if n == 3:  # the third poll of each connection: busy, come back in 1 s, and close
                    writer.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    break
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n")
            writer.close()

        server, port = await _serve(answer)
        rec = Recorder()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        await keep_polling(
            loop, port, [b"GET /a HTTP/1.1\r\n\r\n"], rec, until=started + 1.5, timeout=5.0,
            wait_retry_after=True,
        )  # fmt: skip
        assert time.monotonic() - started >= 1.0  # waited the Retry-After before the next connection
        server.close()
        return rec

    rec = asyncio.run(main())
    outcomes = rec.kinds["policy"].outcomes
    assert outcomes[304] == 2 * outcomes[503] and outcomes[503] >= 1  # every answer counted
    assert rec.retry_after_seen == outcomes[503] and len(connections) == outcomes[503]
    assert set(outcomes) == {304, 503}


def test_keep_polling_does_not_reuse_a_connection_the_server_said_it_closes() -> None:
    """An answer with Connection: close ends its connection before the server's FIN is seen: a
    request sent on it meanwhile would never be answered (here the server reads nothing more)."""
    connections: list[int] = []  # that carried a poll

    async def main() -> Recorder:
        async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):  # the last, closed unused at the end
                writer.close()
                return
            connections.append(1)
            writer.write(b"HTTP/1.1 503 Busy\r\nconnection: close\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await reader.read()  # held open until the client closes it
            writer.close()

        return await _keep_polling_for(0.5, closing, timeout=2.0)

    rec = asyncio.run(main())
    outcomes = rec.kinds["policy"].outcomes
    assert set(outcomes) == {503} and outcomes[503] == len(connections) >= 2


def test_keep_polling_counts_a_silent_server_as_timeouts() -> None:
    async def main() -> Recorder:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        return await _keep_polling_for(0.5, silent, timeout=0.2)

    rec = asyncio.run(main())
    assert set(rec.kinds["policy"].outcomes) == {TIMEOUT}
    assert rec.kinds["policy"].percentile(0.5) >= 0.19


async def _keep_polling_for(seconds: float, handler: Handler, *, timeout: float) -> Recorder:
    """One keep_polling connection (and its successors) against `handler` for `seconds`."""
    from bench.fleetsim.poller import keep_polling

    server, port = await _serve(handler)
    rec = Recorder()
    until = time.monotonic() + seconds
    await keep_polling(asyncio.get_running_loop(), port, [b"GET / HTTP/1.1\r\n\r\n"], rec,
                       until=until, timeout=timeout)  # fmt: skip
    server.close()
    return rec


def test_ingest_bodies_built_ahead_are_fresh_batches_of_the_hosts_visited() -> None:
    """bench fleet's ingest step builds its bodies before the clock: each one a batch of new
    events (distinct ids: an id sent twice is a retry, stored once) naming the host it is sent
    for (another name takes the server's slower path), for the hosts the closed loop visits."""
    from bench.fleetsim.scenarios import BODIES_AHEAD_RATE, bodies_ahead

    hosts = make_hosts(range(200), seed=3, seeded=True, rng=random.Random(1))
    params = {"seconds": 0.02, "batch": 5, "concurrency": 3}
    ahead = bodies_ahead(hosts, params, random.Random(2), conns=3)
    by_index = {h.index: h for h in hosts}
    ids: list[str] = []
    for index, bodies in ahead.items():
        for body in bodies:
            events = json.loads(body)["events"]
            assert len(events) == 5 and {e["hostname"] for e in events} == {by_index[index].hostname}
            ids += [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)) >= params["seconds"] * BODIES_AHEAD_RATE
    # The hosts visited: connection c sends for c+3, c+6, ... (bench/fleetsim/scenarios.py _closed_loop).
    per_connection = math.ceil(params["seconds"] * BODIES_AHEAD_RATE / 5 / 3)
    visited = {hosts[(c + 3 * k) % 200].index for c in range(3) for k in range(1, per_connection + 1)}
    assert set(ahead) == visited and len(visited) < len(hosts)
