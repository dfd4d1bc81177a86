"""The forwarder's answers that need no upstream (blocked, cached, repeats, bad input), and the
judge's verdicts and records, on a fake clock and a fixed asker."""

from __future__ import annotations

from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from endpoint_agent.dns.addrmap import AddressMap
from endpoint_agent.dns.forwarder import Forwarder
from endpoint_agent.dns.judge import FilterState, PolicyJudge
from endpoint_agent.policy import compile_policy, parse_policy
from endpoint_agent.types import Endpoint, Outcome, ProcessInfo, Violation
from tests.support.dns_doubles import FixedAsker
from tests.support.doubles import FakeClock

LISTEN = Endpoint("127.0.0.153", 53)
CLIENT = ("127.0.0.1", 40000)
CURL = ProcessInfo(
    pid=77, ppid=1, name="curl", exe="/usr/bin/curl", username="bob", uid=1000, create_time=5.0
)
POLICY = """
name: t
version: 4
mode: enforce
rules:
  - {id: block-x, action: block, enforce: connection, network: {domain: ["x.example", "*.x.example"]}}
  - {id: report-y, action: report, process: {name: curl}, network: {domain: y.example}}
"""


class Setup:
    def __init__(
        self, *, enforce: bool = True, sinkhole: str | None = None, asker: ProcessInfo | None = CURL
    ):
        self.clock = FakeClock()
        self.records: list[Violation] = []
        self.learned: list[tuple[int, list[tuple[str, int]]]] = []
        self.addresses = AddressMap(self.clock)
        self.asker = FixedAsker(asker)
        self.judge = PolicyJudge(
            clock=self.clock,
            listen=LISTEN,
            addresses=self.addresses,
            asker=self.asker,
            record=self.records.extend,
            learn=lambda index, answers: self.learned.append((index, answers)),
            sinkhole=sinkhole,
            report_interval=60,
        )
        self.compiled = compile_policy(parse_policy(POLICY, "p"))
        self.judge.update(FilterState.of(self.compiled, 4, enforce))
        self.forwarder = Forwarder(LISTEN, [Endpoint("127.0.0.2", 53)], self.judge, clock=self.clock)

    def ask(self, name: str, qtype: str = "A", qid: int = 1) -> DNSRecord | None:
        query = DNSRecord.question(name, qtype)
        query.header.id = qid
        raw = self.forwarder.answer(query.pack(), "udp", CLIENT)
        return DNSRecord.parse(raw) if raw is not None else None

    def cache(self, name: str, ip: str, ttl: int = 300) -> None:
        reply = DNSRecord.question(name, "A").reply()
        reply.add_answer(RR(name, QTYPE.A, rdata=A(ip), ttl=ttl))
        self.forwarder.cache.put((name, QTYPE.A, 1), reply)

    def recorded(self) -> list[Violation]:
        self.judge.flush()
        return list(self.records)


def test_blocked_name_is_nxdomain_recorded_once_per_interval_with_the_asker() -> None:
    s = Setup()
    answer = s.ask("WWW.X.Example")
    assert answer is not None and answer.header.rcode == RCODE.NXDOMAIN
    assert answer.header.id == 1 and str(answer.q.qname) == "WWW.X.Example."
    s.ask("www.x.example", qid=2)  # the same process and domain within the interval
    found = s.recorded()
    assert len(found) == 1
    v = found[0].to_json()
    assert (v["rule_id"], v["action"], v["process_name"], v["pid"]) == (
        "block-x",
        "connection_blocked",
        "curl",
        77,
    )
    assert v["connection"]["domain"] == "www.x.example"  # type: ignore[index]
    assert v["policy_version"] == 4 and v["source"] == "dns"
    s.clock.advance(61)
    s.ask("www.x.example", qid=3)
    assert len(s.recorded()) == 2  # a new interval: recorded again


def test_sinkhole_answers_the_block_page_address_for_its_family_only() -> None:
    s = Setup(sinkhole="192.0.2.80")
    answer = s.ask("x.example")
    assert answer is not None and answer.header.rcode == RCODE.NOERROR
    assert [str(rr.rdata) for rr in answer.rr] == ["192.0.2.80"]
    aaaa = s.ask("x.example", "AAAA")
    assert aaaa is not None and aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr


def test_monitor_mode_answers_and_records_would_block() -> None:
    s = Setup(enforce=False)
    s.cache("x.example", "192.0.2.7")
    answer = s.ask("x.example")
    assert answer is not None and [str(rr.rdata) for rr in answer.rr] == ["192.0.2.7"]
    assert [v.action for v in s.recorded()] == [Outcome.WOULD_BLOCK]


def test_report_rule_answers_and_is_judged_again_for_every_repeat() -> None:
    s = Setup()
    s.cache("y.example", "192.0.2.9")
    for qid in range(3):
        answer = s.ask("y.example", qid=qid)
        assert answer is not None and answer.rr and answer.header.id == qid
    assert s.asker.lookups == 3  # a named domain never takes the repeat shortcut
    assert [v.action for v in s.recorded()] == [Outcome.REPORTED]


def test_names_no_rule_names_are_answered_from_cache_without_an_asker_lookup() -> None:
    s = Setup()
    s.cache("site.example", "192.0.2.1", ttl=100)
    first = s.ask("site.example", qid=10)
    s.clock.advance(30)
    repeat = s.ask("site.example", qid=11)
    assert first is not None and repeat is not None
    assert repeat.header.id == 11 and repeat.rr[0].ttl == 70  # TTLs count down
    assert s.asker.lookups == 0 and s.recorded() == []
    assert s.forwarder.stats.cache_hits == 2
    s.clock.advance(71)
    assert s.ask("site.example", qid=12) is not None  # expired: forwarded; no socket -> SERVFAIL
    assert s.forwarder.stats.servfail == 1


def test_a_new_policy_reaches_repeated_queries_at_once() -> None:
    s = Setup()
    s.cache("later.example", "192.0.2.2")
    s.ask("later.example")
    s.ask("later.example")
    blocking = POLICY.replace('"x.example", ', '"x.example", "later.example", ')
    s.judge.update(FilterState.of(compile_policy(parse_policy(blocking, "p")), 5, True))
    answer = s.ask("later.example")
    assert answer is not None and answer.header.rcode == RCODE.NXDOMAIN


def test_unknown_asker_still_blocked_by_rules_without_process_conditions() -> None:
    s = Setup(asker=None)
    blocked = s.ask("x.example")
    assert blocked is not None and blocked.header.rcode == RCODE.NXDOMAIN
    s.cache("y.example", "192.0.2.9")
    allowed = s.ask("y.example")  # the report rule needs `curl`: an unknown asker is not curl
    assert allowed is not None and allowed.rr
    assert [(v.rule_id, v.process_name) for v in s.recorded()] == [("block-x", "unknown")]


def test_answers_teach_addresses_and_connection_rules_learn_them() -> None:
    s = Setup()
    s.judge.learned("www.x.example", [("192.0.2.50", 120), ("2001:db8::5", 120)])
    s.judge.learned("other.example", [("192.0.2.60", 120)])
    assert s.addresses.lookup("192.0.2.50") == "www.x.example"
    assert s.addresses.lookup("::ffff:192.0.2.60") == "other.example"
    assert s.learned == [(0, [("192.0.2.50", 120), ("2001:db8::5", 120)])]


def test_malformed_and_odd_packets_never_raise() -> None:
    s = Setup()
    for junk in (b"", b"\x00", b"\xff" * 12, b"\x00\x01" + b"\xff" * 40, bytes(range(256))):
        assert s.forwarder.answer(junk, "udp", CLIENT) is None
    response = DNSRecord.question("x.example").reply().pack()
    assert s.forwarder.answer(response, "udp", CLIENT) is None  # an answer sent to us is dropped
    notify = DNSRecord.question("x.example")
    notify.header.opcode = 4
    answer = s.forwarder.answer(notify.pack(), "udp", CLIENT)
    assert answer is not None and DNSRecord.parse(answer).header.rcode == RCODE.NOTIMP
    assert s.forwarder.stats.malformed >= 5


def test_probe_name_is_answered_by_the_forwarder_itself(tmp_path: Path) -> None:
    s = Setup()
    answer = s.ask("endpoint-agent-probe.invalid")
    assert answer is not None and answer.header.rcode == RCODE.NXDOMAIN
    assert s.asker.lookups == 0
