"""Push export throughput: can the sinks keep up with ingest?

One SQLite store in a temporary directory (the server's default), N violations stored through the
server's own ingest path (EventRepo.insert_batch, batches of 500), then each sink's runner drains
them as it does in the server (SinkRunner.step: read after the cursor, deliver, advance): to an
OCSF file sink, and to a TCP syslog receiver on 127.0.0.1 (tests/support-style octet-counted
framing, read and counted in a thread). Targets: >= 5,000 events/s to the file sink, >= 2,000/s
to TCP syslog, and export no slower than ingest on the same store (ratio ingest/export rate).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.report import Target, targets_block
from endpoint_agent import __version__
from endpoint_contract.events import Violation
from server_stub.export.config import ExportConfig, FileSink, SyslogSink
from server_stub.export.service import SinkRunner
from server_stub.store import EventInsert, Store, sqlite_url
from server_stub.store.events import event_insert

SUMMARY = "push export: events/s to an OCSF file and to TCP syslog, against ingest on one store"
FILE_TARGET = 5000.0
SYSLOG_TARGET = 2000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("export")
    group.add_argument("--export-events", type=int, default=20_000, help="violations to export (20000)")


def _violation(i: int, now: datetime, host_id: str) -> EventInsert:
    data = {
        "kind": "violation", "event_id": str(uuid.uuid4()), "detected_at": now.isoformat(),
        "rule_id": "p2p-qbittorrent", "category": "p2p", "severity": "high", "action": "killed",
        "pid": 4000 + i, "process_name": "qbittorrent", "exe": "/opt/qbt/qbittorrent", "sha256": "ab" * 32,
        "cmdline": "qbittorrent --profile=x", "ppid": 1, "parent_name": "bash", "username": "alice",
        "evidence": [{"attribute": "name", "pattern": "qbittorrent", "value": "qbittorrent"}],
        "reason": "process name 'qbittorrent' matched rule p2p-qbittorrent", "policy_version": 3,
    }  # fmt: skip
    return event_insert(Violation.model_validate(data), host_id, "bench-ws")


class _CountingSyslog:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        buf = b""
        while chunk := conn.recv(1 << 20):
            buf += chunk
            while True:
                head, sep, rest = buf.partition(b" ")
                if not sep or len(rest) < int(head):
                    break
                buf = rest[int(head) :]
                self.count += 1


def _drain(runner: SinkRunner, total: int, done: Callable[[], int]) -> float:
    started = time.perf_counter()
    while runner.health.cursor < total or done() < total:
        runner.step()
        if runner.health.failures:
            raise RuntimeError(f"export: {runner.health.last_error}")
    return time.perf_counter() - started


def _runner(sink: FileSink | SyslogSink, store: Store, config: ExportConfig) -> SinkRunner:
    return SinkRunner(
        sink,
        store.exports,
        config,
        product_version=__version__,
        owner="bench",
        clock=lambda: datetime.now(UTC),
    )


def run(args: argparse.Namespace) -> list[Target]:
    n = args.export_events
    with tempfile.TemporaryDirectory(prefix="ea-bench-export-") as tmp:
        work = Path(tmp)
        store = Store.open(sqlite_url(work))
        try:
            host_id = store.hosts.enroll(
                machine_id="bench", hostname="bench-ws", node_key_hash="0" * 64, now=datetime.now(UTC)
            )
            now = datetime.now(UTC) - timedelta(minutes=1)
            events = [_violation(i, now, host_id) for i in range(n)]
            started = time.perf_counter()
            for start in range(0, n, 500):
                store.events.insert_batch(host_id, events[start : start + 500], now)
            ingest = n / (time.perf_counter() - started)
            last = store.exports.latest_id()
            config = ExportConfig(settle_seconds=0)
            file_sink = FileSink(type="file", name="file", path=work / "ocsf.jsonl", max_bytes=1 << 30)
            runner = _runner(file_sink, store, config)
            file_rate = n / _drain(runner, last, lambda: runner.health.delivered)
            receiver = _CountingSyslog()
            syslog_sink = SyslogSink(type="syslog", name="syslog", host="127.0.0.1", port=receiver.port)
            runner = _runner(syslog_sink, store, config)
            syslog_rate = n / _drain(runner, last, lambda: receiver.count)
        finally:
            store.close()
    print(f"  {n} violations, SQLite store; ingest {ingest:,.0f}/s (insert_batch, batches of 500)")
    print(
        f"  export to OCSF file  {file_rate:,.0f} events/s; to TCP syslog (CEF) {syslog_rate:,.0f} events/s"
    )
    targets = [
        Target("5000 events/s / file export rate", FILE_TARGET / file_rate, 1.0),
        Target("2000 events/s / TCP syslog export rate", SYSLOG_TARGET / syslog_rate, 1.0),
        Target("ingest rate / slowest export rate", ingest / min(file_rate, syslog_rate), 1.0),
    ]
    print(targets_block(targets))
    return targets
