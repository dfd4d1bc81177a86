"""`endpoint-agent status`: what the local agent is doing, from STATE_DIR/status.json.

The running service rewrites status.json after every scan; this command only reads it (and the
store's queue counts, when it may), so it works while the agent runs and after it stopped.
"Running" means the PID in the file is alive *and* is the same process (same start time).
Exit 0 when the agent runs, 3 when it does not (so `endpoint-agent status` is a health check; 3 is
"not running" for LSB init scripts and `systemctl status` too), 2 when the state is unreadable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import psutil

from endpoint_agent.display import printable
from endpoint_agent.errors import AgentError, StoreError
from endpoint_agent.report.store import ViolationStore
from endpoint_agent.settings import AgentSettings


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AgentError(f"{path}: not valid JSON (line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise AgentError(f"{path}: expected a JSON object")
    return data


def is_running(status: dict[str, Any]) -> bool:
    if status.get("state") != "running":
        return False
    pid, created = status.get("pid"), status.get("process_create_time")
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        return created is None or abs(proc.create_time() - float(created)) < 0.01
    except (psutil.Error, TypeError, ValueError):
        return False


def collect_status(settings: AgentSettings) -> dict[str, Any]:
    status = read_status(settings.status_path) or {}
    out: dict[str, Any] = {**status, "running": bool(status) and is_running(status)}
    out["state_dir"] = str(settings.state_dir)
    if status and not out["running"]:
        out["state"] = "stopped"
    try:
        store = ViolationStore.open_existing(settings.store_path)
    except StoreError:
        store = None  # e.g. not root: the counts from the last status.json stay
    if store is not None:
        with store:
            out["queue"] = store.counts().to_json()
    return out


EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3


def show_status(settings: AgentSettings, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    data = collect_status(settings)
    if as_json:
        out.write(json.dumps(data, sort_keys=True) + "\n")
    else:
        for line in _human(data):
            print(printable(line), file=out)  # errors and paths may quote what a user chose
    return EXIT_RUNNING if data["running"] else EXIT_NOT_RUNNING


def _human(d: dict[str, Any]) -> list[str]:
    if "pid" not in d:
        return [f"agent: never ran with state dir {d['state_dir']}"]
    state = "running" if d["running"] else "not running"
    lines = [f"agent: {state} (pid {d.get('pid')}, version {d.get('agent_version')})"]
    policy = d.get("policy")
    lines.append(
        f"policy: {policy.get('name')} version {policy.get('version')} ({policy.get('source')})"
        if policy
        else "policy: none yet"
    )
    mode = d.get("mode")
    if mode:
        lines.append(f"mode: {mode.get('mode')} ({mode.get('reason')})")
    c = d.get("circuit") or {}
    if c.get("open"):
        lines.append(
            f"circuit breaker: OPEN since {c.get('opened_at')} (policy version {c.get('policy_version')})"
        )
    else:
        stops = f"{c.get('stops_in_window', 0)} of {c.get('max_kills', '?')}"
        lines.append(f"circuit breaker: closed ({stops} stops in {c.get('window_seconds', '?')}s)")
    glass = d.get("break_glass") or {}
    if glass.get("active"):
        lines.append(f"break-glass: ACTIVE ({glass.get('path')})")
    elif glass.get("note"):
        lines.append(f"break-glass: ignored file {glass.get('path')}: {glass.get('note')}")
    scan = d.get("last_scan")
    if scan:
        counts = f"{scan.get('processes')} processes, {scan.get('findings')} findings"
        lines.append(f"last scan: {scan.get('at')} ({counts}, {scan.get('new_violations')} new violations)")
    else:
        lines.append("last scan: none yet")
    every = f", every {d['scan_interval']:g}s" if isinstance(d.get("scan_interval"), int | float) else ""
    lines.append(f"scans: {d.get('scans', 0)} ({d.get('scan_errors', 0)} failed{every})")
    events = d.get("process_events")
    if isinstance(events, dict):
        lines.append(
            f"process starts: {events.get('mode')} ({events.get('execs', 0)} execs seen, "
            f"{events.get('processes_checked', 0)} checked, {events.get('overruns', 0)} overruns)"
        )
        tracking = events.get("tracking")
        if isinstance(tracking, dict):  # scans trust the events; repairs are what the events missed
            lines.append(
                f"process tracking: {tracking.get('repairs', 0)} repairs by the re-walk"
                f" (every process re-read within {tracking.get('rewalk_scans')} scans),"
                f" {tracking.get('full_walks', 0)} full walks,"
                f" {tracking.get('pid_probes', 0)} scans by PID range,"
                f" {tracking.get('listings', 0)} by listing"
            )
    gate = d.get("exec_gate")
    if isinstance(gate, dict):
        lines.append(_gate_line(gate))
    dns = d.get("dns_filter")
    if isinstance(dns, dict):
        lines.append(_dns_line(dns, d.get("netfilter")))
    lines.append(f"processes stopped: {d.get('stops_total', 0)}")
    hashing = d.get("hashing")
    if isinstance(hashing, dict):
        lines.append(
            "hashing: "
            + (
                f"{hashing.get('files_hashed', 0)} files hashed, {hashing.get('queued', 0)} queued,"
                f" {hashing.get('deferred', 0)} deferred (rewritten)"
                if hashing.get("wanted")
                else "off (no sha256 rule in the policy)"
            )
        )
    if d.get("last_error"):
        lines.append(f"last error: {d['last_error']}")
    q = d.get("queue")
    if q:
        lines.append(
            f"queue: {q.get('pending')} pending upload, {q.get('total')} stored, {q.get('dropped')} dropped"
        )
    # -- report: uploads and heartbeats to the server --
    report = d.get("report")
    if isinstance(report, dict):
        if report.get("last_error"):
            lines.append(
                f"server: FAILING ({report.get('failures_in_a_row')} in a row: {report['last_error']}); "
                f"retry in {report.get('next_attempt_in_seconds')}s; "
                f"last success {report.get('last_success_at')}"
            )
        else:
            lines.append(_server_line(report))
    sync = d.get("policy_sync")
    if isinstance(sync, dict):
        lines.append(
            f"policy sync: last poll {sync.get('last_poll_at') or 'not yet'} ({sync.get('last_outcome')}); "
            f"{sync.get('polls', 0)} polls, {sync.get('not_modified', 0)} unchanged, "
            f"{sync.get('activated', 0)} activated, {sync.get('rejected', 0)} rejected"
        )
        if sync.get("last_error"):
            lines.append(f"policy sync error: {sync['last_error']}")
    lines.append(f"updated: {d.get('updated_at')}")
    return lines


def _server_line(report: dict[str, Any]) -> str:
    """Upload and heartbeat are separate requests: each is named with its own time."""
    uploaded = report.get("uploaded_since_start", 0)
    upload = report.get("last_upload_at") or report.get("last_success_at")
    heartbeat = report.get("last_success_at")
    return (
        f"server: {uploaded} events uploaded since start"
        + (f" (last upload {upload})" if upload else " (no upload yet)")
        + f"; last heartbeat {heartbeat or 'pending'}"
    )


def _dns_line(dns: dict[str, Any], table: object) -> str:
    """DNS filter: serving on 127.0.0.153:53 (120 queries, 80 from cache, 2 blocked); nftables: 1 rule."""
    line = f"DNS filter: {dns.get('state')} ({dns.get('setting')})"
    stats = dns.get("stats")
    if isinstance(stats, dict):
        line = (
            f"DNS filter: {dns.get('state')} on {dns.get('listen')} ({stats.get('queries', 0)} queries, "
            f"{stats.get('cache_hits', 0)} from cache, {stats.get('blocked', 0)} blocked, "
            f"{stats.get('upstream_timeouts', 0)} upstream timeouts)"
        )
    if dns.get("last_error"):
        line += f"; last error: {dns['last_error']}"
    if isinstance(table, dict) and table.get("active"):
        line += f"; nftables table inet endpoint_agent: {table.get('rules', 0)} rule(s)"
    return line


def _gate_line(g: dict[str, Any]) -> str:
    """exec gate: on (1204 decisions, 3 denied, cache hit rate 99.1%, p50 0.04 ms, p99 0.3 ms, ...)."""
    state = str(g.get("state"))
    if state in ("off", "stopped") or "decisions" not in g:
        detail = f": {g['detail']}" if g.get("detail") else ""
        return f"exec gate: {state}{detail}"
    rate = g.get("cache_hit_rate")
    shown = f"{rate * 100:.1f}%" if isinstance(rate, int | float) else "n/a"
    line = (
        f"exec gate: {state} ({g.get('decisions', 0)} decisions, {g.get('denied', 0)} denied, "
        f"{g.get('would_block', 0)} would block, cache hit rate {shown}, p50 {g.get('p50_ms')} ms, "
        f"p99 {g.get('p99_ms')} ms, {g.get('deadline_misses', 0)} deadline misses, "
        f"{g.get('restarts', 0)} restarts)"
    )
    return f"{line}; {g['detail']}" if g.get("detail") else line


__all__ = ["collect_status", "is_running", "read_status", "show_status"]
