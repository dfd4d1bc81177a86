"""The gate process: holds the fanotify descriptor and does nothing else.

    python -m endpoint_agent.gate.worker CTRL_FD      (GateConfig as JSON on stdin)

One loop polls four descriptors: the fanotify group (exec permission events), the control
socket to the agent (pings, mode changes), the mount table (new mounts get marked) and a wake-up
pipe of the judge thread. Each exec is answered from the table in memory (gate/table.py); what
the table does not know yet (a new file's facts: path, ELF or not, SHA-256, package; a new uid's
name) is read by the judge thread, and the exec waits for it at most `deadline_ms`, while the
loop goes on answering other execs. Past the deadline the exec is allowed and counted; the
file's verdict lands in the table for its next exec.

On the decision path: no log line, no file write, no network, never a blocking send to the
agent (a full socket drops the report and counts it). If the agent goes away (the control
socket closes) the gate exits; the kernel then allows whatever was still waiting.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import resource
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.gate.facts import FactsReader, FileFacts, package_index
from endpoint_agent.gate.fanotify import ExecEvent, FanotifyGroup, GateUnavailable
from endpoint_agent.gate.mounts import MountWatch, same_namespace
from endpoint_agent.gate.protocol import LATE, GateConfig, Report, decode, encode
from endpoint_agent.gate.table import Answer, DryRunResult, FileJob, FileKey, Table, Wait, assess
from endpoint_agent.policy.exec_time import ExecTimePolicy, ExecUser

logger = logging.getLogger(__name__)

GATE_NICE = -10
GC_THRESHOLD = 50_000  # allocations between young collections (decisions make no reference cycles)
MAX_JOBS = 256  # files waiting for the judge thread; past it new files are allowed at once


@dataclass(slots=True, eq=False)
class _Held:
    fd: int
    pid: int
    key: FileKey
    st: os.stat_result
    started: int  # perf_counter_ns
    deadline: float  # monotonic
    waited: bool = False  # not answered from the table at once (facts had to be read)


@dataclass
class _Judge:
    """The thread that reads facts (slow: hashing, the package index, user names)."""

    reader: FactsReader
    wake: int  # write end of the wake-up pipe
    jobs: queue.SimpleQueue[tuple[Wait, int] | Callable[[], Callable[[], None]] | None] = field(
        default_factory=queue.SimpleQueue
    )
    # (job, facts) for the table, or (None, what the loop runs) for a `call`
    done: deque[tuple[Wait | None, FileFacts | ExecUser | Callable[[], None]]] = field(default_factory=deque)

    def start(self) -> None:
        threading.Thread(target=self._run, name="gate-judge", daemon=True).start()

    def submit(self, job: Wait, fd: int = -1) -> None:
        self.jobs.put((job, fd))

    def call(self, func: Callable[[], Callable[[], None]]) -> None:
        """Run `func` here; what it returns then runs in the loop's thread."""
        self.jobs.put(func)

    def _run(self) -> None:
        while (item := self.jobs.get()) is not None:
            try:
                if callable(item):
                    self.done.append((None, item()))
                    continue
                job, fd = item
                if isinstance(job, FileJob):
                    try:
                        result: FileFacts | ExecUser = self.reader.read(fd)
                    finally:
                        os.close(fd)
                else:
                    result = ExecUser(job.uid, _username(job.uid))
                self.done.append((job, result))
            except Exception:
                logger.exception("gate: judging failed")
            finally:
                with contextlib.suppress(OSError):
                    os.write(self.wake, b"x")


def _username(uid: int) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OSError):
        return None


class Gate:
    def __init__(self, config: GateConfig, ctrl: socket.socket) -> None:
        from endpoint_agent.policy import Policy, compile_policy

        self._config = config
        self._ctrl = ctrl
        policy = Policy.model_validate(config.policy)
        self.policy_version = policy.version
        self.exec_policy = ExecTimePolicy.of(compile_policy(policy))
        self._guard = Guard(extra=config.protected_extra, agent_pid=config.agent_pid)
        self._exempt = frozenset({config.agent_pid, os.getpid()})
        self._deadline = config.deadline_ms / 1000.0
        self.table = Table(
            self.exec_policy,
            self._guard,
            enforce=config.enforce,
            protected_files=_interpreter_files(),
            ignore_marks=config.ignore_marks,
        )
        self.table.mode_reason = config.mode_reason
        self._packages = package_index()
        self._reader = FactsReader(hashes=self.exec_policy.uses_sha256, packages=self._packages)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = wake_r
        self._judge = _Judge(self._reader, wake_w)
        self._waiting: dict[Wait, list[_Held]] = {}
        self._held: list[_Held] = []
        self._reported: dict[tuple[str, str, str, int | None], float] = {}
        self._group: FanotifyGroup | None = None
        self._mounts: MountWatch | None = None
        self._stop = False

    # -- start ----------------------------------------------------------------------------------

    def open(self) -> None:
        self._group = FanotifyGroup.open()
        self._mounts = MountWatch(self._config.mounts_of_pid)
        self._judge.start()
        self._mark_new_mounts()
        if self.table.stats.mounts_marked == 0:
            raise GateUnavailable("no local mount could be marked")
        self._judge.call(self._reader.warm_up_later)
        threading.Thread(target=self._dry_run, name="gate-dry-run", daemon=True).start()

    def _dry_run(self) -> None:
        """In its own thread (with its own hash cache), so the judge thread stays free for execs."""
        reader = FactsReader(hashes=self.exec_policy.uses_sha256, packages=self._packages)
        try:
            result = assess(self.exec_policy, reader, self._guard, max_share=self._config.unsafe_share)
        except Exception as exc:
            logger.exception("gate: dry run failed")
            result = DryRunResult(False, f"the dry run failed: {type(exc).__name__}")
        self._judge.done.append((None, lambda: self._dry_run_done(result)))
        with contextlib.suppress(OSError):
            os.write(self._judge.wake, b"x")

    def _mark_new_mounts(self) -> None:
        assert self._group is not None and self._mounts is not None
        for mount in self._mounts.new_local_mounts():
            try:
                self._group.mark_mount(self._mounts.mark_path(mount))
            except GateUnavailable:
                raise
            except OSError:
                continue  # a mount that went away, or one we may not mark
            self.table.stats.mounts_marked += 1

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        assert self._group is not None and self._mounts is not None
        group = self._group
        poller = select.poll()
        poller.register(group.fd, select.POLLIN)
        poller.register(self._ctrl.fileno(), select.POLLIN)
        poller.register(self._mounts.fd, select.POLLPRI | select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        gfd, cfd, mfd, wfd = group.fd, self._ctrl.fileno(), self._mounts.fd, self._wake_r
        self._send({"op": "started", "mounts": self.table.stats.mounts_marked})
        while not self._stop:
            timeout = None
            if self._held:
                timeout = max(0, int((min(h.deadline for h in self._held) - time.monotonic()) * 1000) + 1)
            for fd, mask in poller.poll(timeout):
                if fd == gfd:
                    for event in group.read():
                        self._handle(event)
                elif fd == wfd:
                    self._judged()
                elif fd == cfd:
                    self._control(mask)
                elif fd == mfd:
                    self._mark_new_mounts()
            if self._held:
                self._expire()

    def _handle(self, event: ExecEvent) -> None:
        stats = self.table.stats
        started = time.perf_counter_ns()
        stats.decisions += 1
        group = self._group
        assert group is not None
        if event.pid in self._exempt:
            stats.exempt += 1
            group.respond(event.fd, allow=True)
            return
        try:
            st = os.fstat(event.fd)
        except OSError:
            stats.errors += 1
            group.respond(event.fd, allow=True)
            return
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        held = _Held(event.fd, event.pid, key, st, started, time.monotonic() + self._deadline)
        self._attempt(held)

    def _attempt(self, held: _Held) -> None:
        result = self.table.decide(held.key, held.pid, held.st)
        if isinstance(result, Answer):
            self._answer(held, result)
            return
        waiting = self._waiting.get(result)
        if waiting is None and self._judge.jobs.qsize() >= MAX_JOBS:
            # a flood of new files (each job holds a descriptor): allow now rather than queue more
            self.table.stats.deadline_misses += 1
            self._answer(held, Answer(True))
            return
        if waiting is None:
            self._waiting[result] = [held]
            if isinstance(result, FileJob):
                try:
                    dup = os.dup(held.fd)
                except OSError:
                    del self._waiting[result]
                    self.table.stats.errors += 1
                    self._answer(held, Answer(True))
                    return
                self._judge.submit(result, dup)
            else:
                self._judge.submit(result)
        else:
            waiting.append(held)
        held.waited = True
        self._held.append(held)

    def _answer(self, held: _Held, answer: Answer) -> None:
        group = self._group
        assert group is not None
        stats = self.table.stats
        if answer.ignorable and self._config.ignore_marks and group.ignore_inode(held.fd):
            stats.ignore_marks += 1
        group.respond(held.fd, allow=answer.allow)
        stats.time(time.perf_counter_ns() - held.started, cached=not held.waited)
        if answer.allow:
            stats.allowed += 1
        else:
            stats.denied += 1
        if answer.protected:
            stats.protected += 1
        if answer.outcome == "would_block":
            stats.would_block += 1
        if answer.outcome is not None and answer.finding is not None:
            self._report(held, answer)

    def _late(self, held: _Held) -> None:
        """An exec allowed at its deadline turned out to be one to deny: the agent stops it if it runs."""
        answer = self.table.decide(held.key, held.pid, held.st)
        if isinstance(answer, Answer) and answer.outcome == "denied" and answer.finding is not None:
            self._report(held, answer, outcome=LATE)

    def _report(self, held: _Held, answer: Answer, *, outcome: str | None = None) -> None:
        finding = answer.finding
        outcome = outcome or answer.outcome
        assert finding is not None and outcome is not None
        proc = finding.process
        uid = proc.uid
        now = time.monotonic()
        key = (outcome, finding.rule_id, proc.exe or "", uid)
        last = self._reported.get(key)
        if outcome != LATE and last is not None and now - last < self._config.report_interval_s:
            self.table.stats.reports_suppressed += 1
            return
        if len(self._reported) > 4096:
            self._reported = {
                k: t for k, t in self._reported.items() if now - t < self._config.report_interval_s
            }
        self._reported[key] = now
        report = Report(
            outcome=outcome,
            rule_id=finding.rule_id,
            category=finding.category,
            reason=finding.reason[:2000],
            message=finding.message,
            help_url=finding.help_url,
            pid=held.pid,
            uid=uid,
            username=proc.username,
            exe=proc.exe or "",
            sha256=proc.sha256,
            evidence=[[e.attribute, e.pattern, e.value] for e in finding.evidence],
            policy_version=self.policy_version,
            at=time.time(),
        )
        self._send(report.to_message())

    def _send(self, msg: dict[str, object]) -> None:
        try:
            self._ctrl.send(encode(msg), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self.table.stats.reports_dropped += 1
            return
        except OSError:
            self.table.stats.reports_dropped += 1
            return
        if msg.get("op") == "report":
            self.table.stats.reports_sent += 1

    def _judged(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        while self._judge.done:
            job, result = self._judge.done.popleft()
            if job is None:
                assert callable(result)
                result()
                continue
            if isinstance(result, ExecUser):
                self.table.add_user(result)
            elif isinstance(result, FileFacts) and isinstance(job, FileJob):
                self.table.add_file(job.key, result)
            for held in self._waiting.pop(job, []):
                if held in self._held:
                    self._held.remove(held)
                    self._attempt(held)
                else:
                    self.table.stats.late_judgements += 1
                    self._late(held)

    def _dry_run_done(self, result: DryRunResult) -> None:
        self.table.set_safety(result.safe, result.reason)
        self._send(
            {
                "op": "ready",
                "safe": result.safe,
                "reason": result.reason,
                "programs": result.programs,
                "would_deny": result.denied,
                "exec_rules": self.exec_policy.rule_count,
                "can_deny": self.exec_policy.can_deny,
                "namespace": "own"
                if self._config.mounts_of_pid is None
                else f"of pid {self._config.mounts_of_pid}",
                # False: execs outside the marked namespace (e.g. the machine's) are not gated
                "covers_init": same_namespace(1)
                if self._config.mounts_of_pid is None
                else self._config.mounts_of_pid == 1,
            }
        )

    def _expire(self) -> None:
        now = time.monotonic()
        keep = []
        for held in self._held:
            if held.deadline <= now:
                self.table.stats.deadline_misses += 1
                self._answer(held, Answer(True))
            else:
                keep.append(held)
        self._held = keep

    def _control(self, mask: int) -> None:
        try:
            data = self._ctrl.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop = True  # the agent went away
            return
        msg = decode(data)
        if msg is None:
            return
        op = msg.get("op")
        if op == "ping":
            # the statistics (a sort of the timing samples) only when asked: about once a second
            pong = {"op": "pong", "seq": msg.get("seq")}
            self._send({**pong, "stats": self.status()} if msg.get("stats") else pong)
        elif op == "mode":
            self.table.set_mode(bool(msg.get("enforce")), str(msg.get("reason") or ""))
        elif op == "stop":
            self._stop = True

    def status(self) -> dict[str, object]:
        return {
            **self.table.stats.to_json(),
            "enforcing": self.table.enforcing,
            "mode_reason": self.table.mode_reason,
            "unsafe_reason": self.table.unsafe_reason,
            "held": len(self._held),
        }

    def close(self) -> None:
        for held in self._held:
            if self._group is not None:
                self._group.respond(held.fd, allow=True)
        self._held = []
        self._judge.jobs.put(None)
        if self._group is not None:
            self._group.close()


def _interpreter_files() -> list[tuple[int, int]]:
    """The agent's interpreter (never denied: the agent and this gate run on it)."""
    out = []
    for path in {sys.executable, os.path.realpath(sys.executable)}:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((st.st_dev, st.st_ino))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="gate: %(levelname)s %(message)s")
    # Descriptors: one per exec being answered and per file being judged.
    with contextlib.suppress(OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    # Every exec of the machine may wait on this process: it runs ahead of ordinary work.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, GATE_NICE)
    ctrl = socket.socket(fileno=int(args[0]))
    try:
        config = GateConfig.from_json(sys.stdin.read())
        gate = Gate(config, ctrl)
        gate.open()
    except Exception as exc:
        with contextlib.suppress(OSError):
            ctrl.send(encode({"op": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return 2
    # What start-up built (the policy, the indexes, the package table) lives as long as the gate: out
    # of the collector's sight, so a collection on the decision path stays short and rare.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    try:
        gate.run()
    finally:
        gate.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
