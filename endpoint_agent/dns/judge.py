"""The DNS filter's policy decision per query, and what it records.

`PolicyJudge.judge()` is on the forwarder's hot path: for a name no rule names it costs one
dict probe per label (`policy.query.query_rules`). Only then is the asking process looked up
(dns/asker.py) and the query judged (`policy.query.evaluate_query`):

* enforce mode and a `block` finding: the query is refused (NXDOMAIN or the sinkhole), recorded
  as `connection_blocked`; when an `enforce: connection` rule names the domain, the name is
  still resolved upstream so its addresses reach the nftables sets;
* monitor mode: answered normally, recorded as `would_block`; `report` rules: `reported`.

A violation names the domain (`connection.domain`) and the asker, once per (process instance,
rule, domain) per `report_interval`. Records are handed to a background writer, so a slow store
never holds up an answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from endpoint_agent.clock import Clock
from endpoint_agent.dns.addrmap import AddressMap
from endpoint_agent.dns.asker import AskerSource
from endpoint_agent.dns.forwarder import ALLOW, ALLOW_JUDGED, Verdict
from endpoint_agent.policy.compile import CompiledPolicy
from endpoint_agent.policy.domains import DomainIndex
from endpoint_agent.policy.query import evaluate_query, query_rules
from endpoint_agent.report.violation import build_violation
from endpoint_agent.types import Connection, Direction, Endpoint, Enforce, Outcome, RuleAction, Violation

logger = logging.getLogger(__name__)

DEFAULT_REPORT_INTERVAL = 3600.0
_MAX_REMEMBERED = 50_000
_MAX_QUEUED = 10_000

Recorder = Callable[[Sequence[Violation]], None]
Learner = Callable[[int, list[tuple[str, int]]], None]  # (connection rule index, answers)


@dataclass(frozen=True)
class FilterState:
    """The policy the filter applies now: pushed by the service after each scan."""

    compiled: CompiledPolicy
    version: int
    enforce: bool  # the effective mode (break-glass and circuit breaker included)
    connection_domains: DomainIndex  # `enforce: connection` rules by domain

    @classmethod
    def of(cls, compiled: CompiledPolicy, version: int, enforce: bool) -> FilterState:
        index = DomainIndex()
        for i in compiled.connection_rules:
            for pattern in compiled.rules[i].domains:
                index.add(pattern, i)
        return cls(compiled, version, enforce, index)


class PolicyJudge:
    def __init__(
        self,
        *,
        clock: Clock,
        listen: Endpoint,
        addresses: AddressMap,
        asker: AskerSource,
        record: Recorder,
        learn: Learner | None = None,
        sinkhole: str | None = None,
        report_interval: float = DEFAULT_REPORT_INTERVAL,
    ) -> None:
        self._clock = clock
        self._listen = listen
        self._addresses = addresses
        self._asker = asker
        self._learn = learn
        self._sinkhole = sinkhole
        self._interval = report_interval
        self._state: FilterState | None = None
        self._reported: dict[tuple[object, ...], float] = {}
        self._queue: queue.Queue[Violation] = queue.Queue(_MAX_QUEUED)
        self.dropped_records = 0
        self._writer = threading.Thread(
            target=self._write_loop, args=(record,), name="dns-record", daemon=True
        )
        self._writer.start()

    def update(self, state: FilterState | None) -> None:
        self._state = state

    @property
    def state(self) -> FilterState | None:
        return self._state

    @property
    def generation(self) -> object:
        return self._state

    # -- the forwarder's QueryJudge --------------------------------------------------------

    def judge(self, name: str, proto: str, client: Endpoint) -> Verdict:
        state = self._state
        if state is None:
            return ALLOW
        candidates = query_rules(state.compiled, name)
        if not candidates:
            return ALLOW
        asker = self._asker.find(proto, client)
        proc = asker.process
        family = "ipv6" if ":" in client.ip else "ipv4"
        query = Connection(
            proc.pid if asker.known else None,
            family,
            proto,
            client,
            self._listen,
            "NONE",
            Direction.OUTBOUND,
            domain=name,
        )
        findings = evaluate_query(state.compiled, proc, query, asker_known=asker.known, candidates=candidates)
        if not findings:
            return ALLOW_JUDGED
        block = state.enforce and any(f.action is RuleAction.BLOCK for f in findings)
        now = self._clock.now()
        for finding in findings:
            if finding.action is RuleAction.REPORT:
                outcome = Outcome.REPORTED
            else:
                outcome = Outcome.CONNECTION_BLOCKED if state.enforce else Outcome.WOULD_BLOCK
            if not self._first_in_interval((proc.pid, proc.create_time, proc.uid, finding.rule_id, name)):
                continue
            detail = f"DNS query answered {'NXDOMAIN' if self._sinkhole is None else 'with the sinkhole'}"
            violation = build_violation(
                finding,
                outcome,
                event_id=str(uuid.uuid4()),
                detected_at=now,
                policy_version=state.version,
                detail=detail if outcome is Outcome.CONNECTION_BLOCKED else "DNS query",
                source="dns",
            )
            try:
                self._queue.put_nowait(violation)
            except queue.Full:
                self.dropped_records += 1
        if not block:
            return ALLOW_JUDGED
        learn = self._learn is not None and any(f.enforce is Enforce.CONNECTION for f in findings)
        return Verdict(block=True, learn=learn, sinkhole=self._sinkhole, final=False)

    def learned(self, name: str, answers: list[tuple[str, int]]) -> None:
        self._addresses.learn(name, answers)
        state = self._state
        if state is None or not state.enforce or self._learn is None or state.connection_domains.empty:
            return
        rules: set[int] = set()
        state.connection_domains.candidates(name, rules)
        for index in sorted(rules):
            self._learn(index, answers)

    # -- records ------------------------------------------------------------------------------

    def _first_in_interval(self, key: tuple[object, ...]) -> bool:
        now = self._clock.monotonic()
        last = self._reported.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._reported) >= _MAX_REMEMBERED:
            cutoff = now - self._interval
            self._reported = {k: t for k, t in self._reported.items() if t >= cutoff}
            if len(self._reported) >= _MAX_REMEMBERED:
                self._reported.clear()
        self._reported[key] = now
        return True

    def _write_loop(self, record: Recorder) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                record(batch)
            except Exception:
                logger.exception("could not record %d DNS violation(s)", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until queued records were handed to the store."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)


__all__ = ["DEFAULT_REPORT_INTERVAL", "FilterState", "PolicyJudge"]
