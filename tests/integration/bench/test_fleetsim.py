"""The fleet simulator (bench/fleetsim) against the real server: does it behave like the agent?

A handful of simulated hosts for a few seconds, at short intervals: they enroll once and keep
their key, poll with If-None-Match (200 once, then 304), post heartbeats and events; a host
whose key an admin reset enrolls again on the 401; a rate-limited host waits at least the
server's Retry-After before it asks again. And `python -m bench.fleet` runs end to end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from bench.fleetsim.agent import Fleet, Server, SimHost, make_hosts
from bench.fleetsim.server import POLICY
from bench.fleetsim.stats import Recorder
from tests.support.server import REPO_ROOT, LiveServer, run_server, subprocess_env


def _server(live: LiveServer) -> Server:
    return Server("127.0.0.1", int(live.base_url.rsplit(":", 1)[1]), live.enroll_secret)


def _run(fleet: Fleet, hosts: list[SimHost], seconds: float) -> None:
    async def main() -> None:
        fleet.start(hosts)
        await asyncio.sleep(seconds)
        fleet.stop()
        await fleet.drain()
        # Kept connections end with their loop (asyncio.run's): a host run again in a later loop
        # must not reuse one registered with this closed one -- its call would never complete.
        for host in hosts:
            for sock in host.idle or ():
                sock.close()
            host.idle = None

    asyncio.run(main())


def _fleet(live: LiveServer, recorder: Recorder, interval: float) -> Fleet:
    return Fleet(None, _server(live), recorder, sync_interval=interval, upload_interval=interval)


def _hosts(count: int) -> list[SimHost]:
    import random

    hosts = make_hosts(range(count), seed=int(time.time()), seeded=False, rng=random.Random(1))
    for host in hosts:
        host.noisy = True
        host.pending = 3  # events recorded before the run
    return hosts


def test_hosts_enroll_once_poll_with_etag_report_and_reenroll_after_a_reset(live_server: LiveServer) -> None:
    assert live_server.publish(POLICY).status_code == 200
    recorder = Recorder()
    hosts = _hosts(4)
    _run(_fleet(live_server, recorder, 0.5), hosts, 3.0)

    assert recorder.kinds["enroll"].outcomes == {200: 4}  # once each, then the key is kept
    polls = recorder.kinds["policy"].outcomes
    assert polls[200] == 4 and polls[304] >= 4 and set(polls) == {200, 304}  # the ETag was sent back
    assert set(recorder.kinds["heartbeat"].outcomes) == {200}
    assert recorder.events_acked >= 12
    with live_server.reader() as c:
        listed = {h["host_id"]: h for h in c.get("/hosts").json()["items"]}
    assert {h.host_id for h in hosts} <= set(listed)
    assert all(listed[h.host_id]["agent_version"] for h in hosts)  # the heartbeat arrived
    with live_server.reader() as c:
        stored = c.get("/violations", params={"host": hosts[0].host_id}).json()
    assert len(stored["items"]) >= 3

    # An admin resets one host: its key stops working; the next call is a 401, it enrolls again
    # (the same host id) and the call goes through.
    lost = hosts[0]
    old_key = lost.node_key
    with live_server.admin() as c:
        assert c.post(f"/hosts/{lost.host_id}/reset").status_code == 200
    recorder = Recorder()
    _run(_fleet(live_server, recorder, 0.5), hosts, 2.0)
    assert recorder.kinds["enroll"].outcomes == {200: 1}
    assert recorder.kinds["policy"].outcomes[401] + recorder.kinds["heartbeat"].outcomes[401] >= 1
    assert lost.node_key != old_key and lost.host_id == hosts[0].host_id
    assert set(recorder.kinds["heartbeat"].outcomes) <= {200, 401}


def test_a_rate_limited_host_waits_for_retry_after(tmp_path: Path) -> None:
    with run_server(tmp_path / "server", extra_args=["--rate-limit", "1", "--rate-burst", "2"]) as live:
        assert live.publish(POLICY).status_code == 200
        recorder = Recorder()
        fleet = _fleet(live, recorder, 0.1)
        host = _hosts(1)[0]
        host.pending = 0
        calls: list[tuple[float, int, str | None]] = []
        plain_call = fleet.call

        async def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            answer = await plain_call(*args, **kwargs)
            calls.append((time.monotonic(), answer.status, answer.header(b"retry-after")))
            return answer

        fleet.call = call  # type: ignore[method-assign]
        fleet.upload_interval = 3600.0  # polls only: one request stream to reason about
        _run(fleet, [host], 4.0)

    limited = [(t, float(after)) for t, status, after in calls if status == 429 and after]
    assert limited, f"no 429 with Retry-After in {calls}"
    assert recorder.retry_after_seen == len(limited)
    for at, after in limited:
        later = [t for t, _s, _a in calls if t > at]
        assert not later or later[0] - at >= after * 0.99  # never sooner than asked


def test_python_m_bench_fleet_runs_end_to_end() -> None:
    cmd = [sys.executable, "-m", "bench.fleet", "--hosts", "30", "--duration", "4"]
    cmd += ["--sync-interval", "1", "--upload-interval", "1", "--procs", "2"]
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "shares this machine's" in out
    assert "hosts per server core" in out
    policy_line = next(line for line in out.splitlines() if line.strip().startswith("policy"))
    assert "304:" in policy_line and "timeout" not in policy_line
    # What surrounded the server: the machine, the kernel's drops, the server's own stall watch
    # (server_stub/stallwatch.py, switched on by the benchmark), the connections opened.
    assert "machine: " in out and "connections dropped from a full accept queue" in out
    assert "server event-loop stalls over 50 ms: " in out
    assert "new connections: " in out
