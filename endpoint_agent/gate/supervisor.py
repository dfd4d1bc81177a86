"""The agent's side of the gate: start the gate process, watch it, kill it when it stalls.

    sup = GateSupervisor(config_source, on_report=bridge.submit, on_event=sink.record)
    sup.start()          # a thread: spawn, ping every 0.25 s, restart with backoff
    sup.status()         # state, decisions, denials, cache hit rate, p50/p99, deadline misses, restarts
    sup.stop()

A gate that does not answer a ping within `stall_seconds` (1 s: SIGSTOP, a deadlock, a crash) is
killed with SIGKILL: its fanotify descriptor closes and the kernel lets every waiting exec run.
Each failure is recorded as a `gate_failed` agent event; the gate is restarted after a backoff
(1, 2, 4, ... s) and, after `max_failures` failures without a healthy minute between them, left
off: `status` and the heartbeat say so. A new policy version restarts the gate (not a failure);
a change of the effective mode only tells the running gate.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from endpoint_agent.gate.protocol import GateConfig, Report, decode, encode

logger = logging.getLogger(__name__)

PING_SECONDS = 0.25
STALL_SECONDS = 1.0
START_SECONDS = 15.0  # the first answer may take an interpreter start and a policy compile
HEALTHY_SECONDS = 60.0
STATS_EVERY = 4  # pings: the gate's statistics about once a second
MAX_FAILURES = 5
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)

ConfigSource = Callable[[], GateConfig | None]


@dataclass(frozen=True)
class _Spawned:
    process: subprocess.Popen[bytes]
    sock: socket.socket
    policy_key: tuple[object, ...]
    started: float


def policy_key(config: GateConfig) -> tuple[object, ...]:
    """What needs a new gate process when it changes (the mode does not)."""
    return (config.policy.get("name"), config.policy.get("version"), config.ignore_marks, config.deadline_ms)


class GateSupervisor:
    def __init__(
        self,
        config_source: ConfigSource,
        *,
        on_report: Callable[[Report], None],
        on_event: Callable[[str, Mapping[str, object]], None],
        stall_seconds: float = STALL_SECONDS,
        ping_seconds: float = PING_SECONDS,
        max_failures: int = MAX_FAILURES,
        backoff: tuple[float, ...] = BACKOFF,
        start_seconds: float = START_SECONDS,
        python: str = sys.executable,
    ) -> None:
        self._config_source = config_source
        self._on_report = on_report
        self._on_event = on_event
        self._stall = stall_seconds
        self._ping = ping_seconds
        self._max_failures = max_failures
        self._backoff = backoff
        self._start_seconds = start_seconds
        self._python = python
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gate: _Spawned | None = None
        self._lock = threading.Lock()
        self.state = "starting"  # starting | on | off | failed | stopped
        self.detail = ""
        self.restarts = 0
        self.failures = 0  # in a row (reset after a healthy minute)
        self.failures_total = 0
        self.last_failure: str | None = None
        self.stats: dict[str, object] = {}
        self.ready: dict[str, object] = {}
        self._mode: tuple[bool, str] | None = None
        self._seq = 0
        self._next_start = 0.0
        self.reports = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="exec-gate-supervisor", daemon=True)
            self._thread.start()

    ensure_running = start

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._kill("stopped")
        self.state = "stopped"

    @property
    def pid(self) -> int | None:
        gate = self._gate
        return gate.process.pid if gate is not None else None

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {
            "state": self.state,
            "detail": self.detail,
            "pid": self.pid,
            "restarts": self.restarts,
            "failures": self.failures_total,
            "last_failure": self.last_failure,
            "reports": self.reports,
        }
        for key in (
            "decisions",
            "denied",
            "would_block",
            "protected",
            "cache_hit_rate",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "deadline_misses",
            "reports_dropped",
            "mounts_marked",
            "ignore_marks",
            "enforcing",
        ):
            if key in self.stats:
                out[key] = self.stats[key]
        if self.ready:
            out["dry_run"] = {k: self.ready.get(k) for k in ("safe", "reason", "programs", "would_deny")}
            out["namespace"] = self.ready.get("namespace")
            out["covers_machine"] = self.ready.get("covers_init")
        return out

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                logger.exception("exec gate supervision failed; retrying")
                self._stop.wait(1.0)
        self._kill("stopped")

    def _step(self) -> None:
        config = self._config_source()
        gate = self._gate
        if config is None:
            if gate is not None:
                self._kill("no policy")
            self.state, self.detail = "off", "no policy yet"
            self._stop.wait(self._ping)
            return
        if gate is None:
            if self.state == "failed" or time.monotonic() < self._next_start:
                self._stop.wait(self._ping)
                return
            self._spawn(config)
            return
        if policy_key(config) != gate.policy_key:
            logger.info("exec gate: new policy; restarting the gate with it")
            self._kill("policy changed")
            self._spawn(config)
            return
        mode = (config.enforce, config.mode_reason)
        if mode != self._mode:
            self._send(gate, {"op": "mode", "enforce": config.enforce, "reason": config.mode_reason})
            self._mode = mode
        self._seq += 1
        seq = self._seq
        self._send(gate, {"op": "ping", "seq": seq, "stats": seq % STATS_EVERY == 0 or not self.stats})
        waited_from = time.monotonic()
        limit = self._stall if self.ready or self.state == "on" else self._start_seconds
        answered = False
        while not self._stop.is_set():
            left = waited_from + (limit if not answered else self._ping) - time.monotonic()
            if left <= 0:
                break
            msg = self._receive(gate, left)
            if msg is None:
                if gate.process.poll() is not None:
                    self._failed(f"the gate process exited with status {gate.process.returncode}")
                    return
                continue
            if msg.get("op") == "pong" and msg.get("seq") == seq:
                answered = True
                stats = msg.get("stats")
                if isinstance(stats, dict):
                    self.stats = stats
            elif self._handle(msg):
                return
        if self._stop.is_set():
            return
        if not answered:
            how = "start" if not self.ready else "answer a ping"
            self._failed(f"the gate did not {how} within {limit:g}s (stopped, deadlocked or crashed)")
            return
        if self.failures and time.monotonic() - gate.started > HEALTHY_SECONDS:
            self.failures = 0

    def _handle(self, msg: dict[str, object]) -> bool:
        """True when the gate is gone."""
        op = msg.get("op")
        if op == "report":
            self.reports += 1
            try:
                self._on_report(Report.from_message(msg))
            except Exception:
                logger.exception("exec gate: a report could not be handled")
        elif op == "started":
            self.state, self.detail = "starting", f"{msg.get('mounts')} mounts marked; dry run"
        elif op == "ready":
            self.ready = dict(msg)
            self.state = "on"
            self.detail = "" if msg.get("safe") else f"monitor only: policy unsafe: {msg.get('reason')}"
            logger.info("exec gate on (pid %s): %s", self.pid, msg.get("reason"))
            if msg.get("covers_init") is False:
                logger.warning(
                    "exec gate: the agent runs in a mount namespace of its own; execs outside it are not "
                    "gated (set exec_gate_mounts: init)"
                )
            if not msg.get("safe"):
                logger.error("exec gate: %s", self.detail)
                self._on_event(
                    "policy_unsafe",
                    {"scope": "exec_gate", "reason": msg.get("reason"), "would_deny": msg.get("would_deny")},
                )
        elif op == "failed":
            self._failed(f"the gate could not start: {msg.get('error')}", permanent=True)
            return True
        return False

    # -- the gate process ------------------------------------------------------------------------

    def _spawn(self, config: GateConfig) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [self._python, "-m", "endpoint_agent.gate.worker", str(theirs.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
            )
        except OSError as exc:
            ours.close()
            theirs.close()
            self._failed(f"cannot start the gate process: {exc}", permanent=True)
            return
        theirs.close()
        assert process.stdin is not None
        try:
            process.stdin.write(config.to_json().encode())
            process.stdin.close()
        except OSError:
            pass  # it died already: seen at the first ping
        with self._lock:
            self._gate = _Spawned(process, ours, policy_key(config), time.monotonic())
        self._mode = (config.enforce, config.mode_reason)
        self.ready = {}
        self.stats = {}
        self.state, self.detail = "starting", "gate process started"

    def _send(self, gate: _Spawned, msg: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            gate.sock.send(encode(msg), socket.MSG_DONTWAIT)

    def _receive(self, gate: _Spawned, timeout: float) -> dict[str, object] | None:
        ready, _, _ = select.select([gate.sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        try:
            data = gate.sock.recv(65536)
        except OSError:
            return None
        if not data:
            gate.process.poll()
            return None
        return decode(data)

    def _kill(self, why: str) -> None:
        with self._lock:
            gate, self._gate = self._gate, None
        if gate is None:
            return
        with contextlib.suppress(OSError):
            gate.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            gate.process.wait(timeout=5.0)
        with contextlib.suppress(OSError):
            gate.sock.close()
        logger.debug("exec gate process %d ended (%s)", gate.process.pid, why)

    def _failed(self, reason: str, *, permanent: bool = False) -> None:
        self._kill(reason)
        self.failures += 1
        self.failures_total += 1
        self.last_failure = reason
        give_up = permanent or self.failures >= self._max_failures
        delay = self._backoff[min(self.failures - 1, len(self._backoff) - 1)]
        if give_up:
            self.state = "failed"
            self.detail = f"left off after {self.failures} failure(s): {reason}"
            logger.error("exec gate %s", self.detail)
        else:
            self.state = "restarting"
            self.detail = f"restart in {delay:g}s after: {reason}"
            self.restarts += 1
            self._next_start = time.monotonic() + delay
            logger.error("exec gate failed: %s; restarting in %gs", reason, delay)
        self._on_event(
            "gate_failed",
            {"reason": reason, "failures": self.failures, "restarts": self.restarts, "left_off": give_up},
        )


__all__ = ["GateSupervisor", "policy_key"]
