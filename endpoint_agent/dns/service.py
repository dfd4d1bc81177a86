"""The network guard: the DNS filter, the resolver switch, the supervisor and the nftables table, as one part.

    guard = NetGuard(settings, clock=clock, record=agent.record)
    guard.recover_left_over()            # at start: undo what a killed agent left (resolver, table)
    guard.update(active_policy, mode)    # after every scan: start/stop the filter, judge, table
    guard.stop()                         # on stop: resolver restored, table removed

`--dns-filter auto` runs the filter only while the active policy has domain conditions (and the
agent is root on Linux); `on` always; `off` never. The nftables table exists only while an
enforce-mode policy has `enforce: connection` rules. Monitor mode adds nothing to the table.
Nothing here may stop the agent: every failure is logged, reported as an agent event, and
leaves the machine's DNS working (fail open).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from endpoint_agent.clock import Clock
from endpoint_agent.dns.addrmap import AddressMap
from endpoint_agent.dns.asker import AskerLookup
from endpoint_agent.dns.forwarder import DnsFilterError, Forwarder
from endpoint_agent.dns.judge import FilterState, PolicyJudge
from endpoint_agent.dns.resolver import (
    ResolverConfig,
    ResolverConfigError,
    choose_resolver,
    restore_left_over,
)
from endpoint_agent.dns.supervisor import RECENT_UPSTREAM_SECONDS, Supervisor
from endpoint_agent.endpoints import parse_server
from endpoint_agent.enforce.netfilter import ConnectionTable, NetfilterError, Nft, NftCli, connection_rules
from endpoint_agent.settings import AgentSettings
from endpoint_agent.types import Endpoint, Violation

logger = logging.getLogger(__name__)

TABLE_MARKER = "netfilter-table"  # under the state dir while the agent's table may exist
PROBE_TIMEOUT = 0.5

Record = Callable[[Sequence[Violation], Sequence[dict[str, object]]], None]


def _privileged() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


class NetGuard:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Clock,
        record: Record,
        resolver: ResolverConfig | None = None,
        nft: Nft | None = None,
        privileged: bool | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._record = record
        self._privileged = _privileged() if privileged is None else privileged
        self._listen = parse_server(settings.dns_listen)
        self._resolver = resolver or choose_resolver(settings.state_dir)
        if nft is None and self._privileged and NftCli.available():
            nft = NftCli()
        self._nft = nft
        self._marker = settings.state_dir / TABLE_MARKER
        self.addresses = AddressMap(clock)
        self._judge = PolicyJudge(
            clock=clock,
            listen=self._listen,
            addresses=self.addresses,
            asker=AskerLookup(clock),
            record=lambda violations: self._record(violations, ()),
            learn=self._queue_learned,
            sinkhole=settings.dns_sinkhole,
            report_interval=settings.dns_report_interval,
        )
        self._forwarder: Forwarder | None = None
        self._upstreams: tuple[Endpoint, ...] = ()
        self._table: ConnectionTable | None = None
        self._table_key: object = None
        self._state_key: object = None
        self._supervisor = Supervisor(self, clock=clock)
        self._lock = threading.RLock()
        self._learn_queue: queue.Queue[tuple[int, list[tuple[str, int]]]] = queue.Queue(10_000)
        self._learner = threading.Thread(target=self._learn_loop, name="netfilter-learn", daemon=True)
        self._learner.start()
        self._start_error: str | None = None
        self.last_error: str | None = None

    # -- start and stop ---------------------------------------------------------------------------

    def recover_left_over(self) -> None:
        """What an agent killed with -9 left: the resolver pointing at a dead filter, its table."""
        try:
            if restore_left_over(self._settings.state_dir, [self._resolver]):
                logger.warning("resolver configuration left by an earlier run restored")
                self._event("dns_filter_recovered_at_start", {"what": "resolver configuration restored"})
        except ResolverConfigError as exc:
            logger.error("%s", exc)
        if self._marker.exists() and self._nft is not None:
            try:
                ConnectionTable(self._nft).remove()
                logger.warning("nftables table left by an earlier run removed")
            except NetfilterError as exc:
                logger.error("cannot remove the nftables table left by an earlier run: %s", exc)
                return
        with contextlib.suppress(FileNotFoundError):
            self._marker.unlink()

    def stop(self) -> None:
        with self._lock:
            self._supervisor.stop()
            self._stop_filter()
            self._remove_table()
            self._judge.flush()

    # -- after every scan ---------------------------------------------------------------------------

    def update(self, policy: Any, mode: Any) -> None:
        """`policy`: the agent's ActivePolicy (or None); `mode`: its ModeDecision for that scan."""
        with self._lock:
            compiled = policy.compiled if policy is not None else None
            enforce = mode is not None and str(getattr(mode.mode, "value", mode.mode)) == "enforce"
            setting = self._settings.dns_filter
            wanted = setting == "on" or (
                setting == "auto" and self._privileged and compiled is not None and compiled.uses_domains
            )
            if wanted and self._forwarder is None:
                self._start_filter()
            elif not wanted and self._forwarder is not None:
                self._stop_filter()
            key = (id(compiled), int(policy.version) if policy else 0, enforce)
            if key != self._state_key:  # a new state makes the forwarder re-judge repeated queries
                self._state_key = key
                state = (
                    FilterState.of(compiled, int(policy.version), enforce) if compiled is not None else None
                )
                self._judge.update(state)
            self._update_table(compiled, int(policy.version) if policy else 0, enforce)

    def _start_filter(self) -> None:
        try:
            upstreams = self._find_upstreams()
            forwarder = Forwarder(self._listen, upstreams, self._judge, clock=self._clock)
            forwarder.start()
        except DnsFilterError as exc:
            if self._start_error != str(exc):
                logger.error("DNS filter not started: %s", exc)
                self._event("dns_filter_failed", {"reason": str(exc)})
            self._start_error = self.last_error = str(exc)
            return
        try:
            self._resolver.apply(self._listen)
        except ResolverConfigError as exc:
            forwarder.stop()
            self._start_error = self.last_error = str(exc)
            logger.error("DNS filter not started: %s", exc)
            self._event("dns_filter_failed", {"reason": str(exc)})
            return
        self._forwarder, self._upstreams, self._start_error = forwarder, tuple(upstreams), None
        self._supervisor.start()

    def _find_upstreams(self) -> list[Endpoint]:
        if self._settings.dns_upstreams:
            found = [parse_server(u) for u in self._settings.dns_upstreams]
        else:
            found = self._resolver.original_upstreams()
        upstreams = [u for u in found if u != self._listen and u.ip != self._listen.ip]
        if not upstreams:
            raise DnsFilterError("no upstream DNS server (set dns_upstreams, or give the machine a resolver)")
        return upstreams

    def _stop_filter(self) -> None:
        self._supervisor.stop()
        try:
            self._resolver.restore()
        except ResolverConfigError as exc:
            logger.error("%s", exc)
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None

    # -- the nftables table -------------------------------------------------------------------------

    def _update_table(self, compiled: Any, version: int, enforce: bool) -> None:
        if self._nft is None:
            return
        rules = connection_rules(compiled) if compiled is not None and enforce else []
        key = (version, enforce, tuple(rules))
        if key == self._table_key:
            return
        self._table_key = key
        if not rules:
            self._remove_table()
            return
        exempt = self._upstreams or tuple(self._resolver.original_upstreams())
        table = ConnectionTable(self._nft, exempt)
        try:
            self._marker.touch()
            table.apply(rules)
        except (NetfilterError, OSError) as exc:
            self.last_error = str(exc)
            logger.error("nftables table not applied: %s", exc)
            self._event("netfilter_failed", {"reason": str(exc)})
            return
        self._table = table
        logger.info("nftables table inet endpoint_agent: %d connection rule(s)", len(rules))
        self._relearn(compiled)

    def _relearn(self, compiled: Any) -> None:
        """Addresses resolved before this policy (or its table) existed go into the new sets."""
        state = FilterState.of(compiled, 0, True)
        if state.connection_domains.empty:
            return
        for ip, name, ttl in self.addresses.items():
            rules: set[int] = set()
            state.connection_domains.candidates(name, rules)
            for index in rules:
                self._queue_learned(index, [(ip, int(ttl))])

    def _remove_table(self) -> None:
        table, self._table = self._table, None
        if table is None and not self._marker.exists():
            return
        try:
            if self._nft is not None:
                (table or ConnectionTable(self._nft)).remove()
            with contextlib.suppress(FileNotFoundError):
                self._marker.unlink()
        except NetfilterError as exc:
            logger.error("cannot remove the nftables table: %s", exc)

    def _queue_learned(self, index: int, answers: list[tuple[str, int]]) -> None:
        with contextlib.suppress(queue.Full):
            self._learn_queue.put_nowait((index, answers))

    def _learn_loop(self) -> None:
        while True:
            batch = [self._learn_queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(self._learn_queue.get(timeout=0.01))
            by_rule: dict[int, list[tuple[str, float]]] = {}
            for index, answers in batch:
                by_rule.setdefault(index, []).extend((ip, float(ttl)) for ip, ttl in answers)
            table = self._table
            for index, learned in by_rule.items():
                if table is None:
                    break
                try:
                    table.learn(index, learned)
                except NetfilterError as exc:
                    logger.error("nftables set update failed: %s", exc)
            for _ in batch:
                self._learn_queue.task_done()

    def wait_learned(self, timeout: float = 2.0) -> None:
        """Tests and benchmarks: wait (bounded) until queued addresses reached the table."""
        done = threading.Event()

        def join() -> None:
            self._learn_queue.join()
            done.set()

        threading.Thread(target=join, daemon=True).start()
        done.wait(timeout)

    # -- the supervisor's Supervised ----------------------------------------------------------------

    def health(self) -> str | None:
        forwarder = self._forwarder
        if forwarder is None:
            return None
        if not forwarder.alive:
            return "the forwarder's threads died"
        if not forwarder.probe_listener(PROBE_TIMEOUT):
            return f"the forwarder does not answer on {self._listen}"
        last_ok = forwarder.stats.last_upstream_ok
        if last_ok is not None and self._clock.monotonic() - last_ok < RECENT_UPSTREAM_SECONDS:
            return None
        if not forwarder.probe_upstreams(PROBE_TIMEOUT):
            return "no upstream DNS server answers (" + ", ".join(map(str, forwarder.upstreams)) + ")"
        return None

    def fail_open(self, reason: str) -> None:
        try:
            self._resolver.restore()
        except ResolverConfigError as exc:
            logger.error("%s", exc)
        self.last_error = reason
        self._event("dns_filter_failed", {"reason": reason, "resolver": "restored"})

    def repair(self) -> None:
        with self._lock:
            forwarder = self._forwarder
            if forwarder is None or forwarder.alive:
                return
            forwarder.stop()
            replacement = Forwarder(self._listen, forwarder.upstreams, self._judge, clock=self._clock)
            try:
                replacement.start()
            except DnsFilterError as exc:
                logger.error("DNS forwarder restart failed: %s", exc)
                return
            self._forwarder = replacement

    def resume(self) -> bool:
        try:
            self._resolver.apply(self._listen)
        except ResolverConfigError as exc:
            logger.error("%s", exc)
            return False
        self._event("dns_filter_recovered", {"listen": str(self._listen)})
        return True

    # -- reporting ----------------------------------------------------------------------------------

    def _event(self, kind: str, detail: dict[str, object]) -> None:
        try:
            self._record((), ({"type": kind, "detail": detail},))
        except Exception:
            logger.exception("could not record agent event %s", kind)

    @property
    def forwarder(self) -> Forwarder | None:
        return self._forwarder

    @property
    def judge(self) -> PolicyJudge:
        return self._judge

    @property
    def table(self) -> ConnectionTable | None:
        return self._table

    def status(self) -> dict[str, object]:
        forwarder = self._forwarder
        supervisor = self._supervisor.state
        if forwarder is None:
            state = "off"
        elif supervisor.failing:
            state = "failed_open"
        else:
            state = "serving"
        out: dict[str, object] = {
            "setting": self._settings.dns_filter,
            "state": state,
            "listen": str(self._listen),
            "learned_addresses": len(self.addresses),
            "supervisor": supervisor.to_json(),
            "last_error": self.last_error,
        }
        if forwarder is not None:
            out["upstreams"] = [str(u) for u in forwarder.upstreams]
            out["cache_entries"] = len(forwarder.cache)
            out["stats"] = forwarder.stats.to_json()
        table = self._table
        return {
            "dns_filter": out,
            "netfilter": {
                "active": bool(table and table.active),
                "rules": len(table.rules) if table else 0,
                "elements_added": table.elements_added if table else 0,
            },
        }


__all__ = ["NetGuard"]
