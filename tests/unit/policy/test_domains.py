"""Domain conditions: normal form, wildcards, domain lists (inline and files), connection
enforcement validation, and judging a DNS query (policy/query.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpoint_agent.errors import PolicyError
from endpoint_agent.policy import compile_policy, load_policy_file, parse_policy
from endpoint_agent.policy.domains import DomainSet, normalize_name, normalize_pattern, query_name
from endpoint_agent.policy.query import evaluate_query, query_rules
from endpoint_agent.types import Connection, Direction, Endpoint, Enforce, ProcessInfo, RuleAction


def test_normal_form_is_lower_case_without_trailing_dot_and_punycode() -> None:
    assert normalize_name("WWW.Example.COM.") == "www.example.com"
    assert normalize_name("Bücher.Example") == "xn--bcher-kva.example"
    assert normalize_name("_dmarc.example.com") == "_dmarc.example.com"
    assert normalize_pattern("*.Example.com") == "*.example.com"


@pytest.mark.parametrize(
    "bad",
    ["", ".", "a..b", "*.com", "a.*.example.com", "ex*mple.com", "-bad-.example", "a" * 64 + ".example"],
)
def test_bad_patterns_are_refused_with_a_sentence(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_pattern(bad)


def test_query_name_never_raises() -> None:
    assert query_name("a b.example") is None
    assert query_name("\udcff.example") is None
    assert query_name("Ok.Example.") == "ok.example"


def test_wildcard_matches_subdomains_at_any_depth_not_the_apex() -> None:
    patterns = DomainSet.of(["*.example.com", "exact.example.net"])
    assert patterns.first_match("a.example.com") == "*.example.com"
    assert patterns.first_match("a.b.example.com") == "*.example.com"
    assert patterns.first_match("example.com") is None
    assert patterns.first_match("badexample.com") is None
    assert patterns.first_match("exact.example.net") == "exact.example.net"
    assert patterns.first_match("sub.exact.example.net") is None


POLICY = """
name: t
version: 3
mode: enforce
domain_lists:
  gambling: {file: lists/gambling.txt}
rules:
  - id: block-gambling
    action: block
    enforce: connection
    network: {domain_list: gambling}
  - id: browsers-to-trackers
    action: report
    process: {name: firefox}
    network: {domain: "*.tracker.example"}
    unless: {user: alice}
  - id: tracker-port
    action: block
    network: {domain: "*.tracker.example", remote_port: 6969}
"""


def _write(tmp_path: Path, policy: str = POLICY, listing: str | None = None) -> Path:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "gambling.txt").write_text(
        listing if listing is not None else "# casinos\nCasino.Example   # the apex\n*.casino.example\n\n"
    )
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    return path


def test_domain_list_file_next_to_the_policy_is_inlined(tmp_path: Path) -> None:
    policy = load_policy_file(_write(tmp_path))
    assert policy.domain_lists == {"gambling": ("casino.example", "*.casino.example")}
    # What `endpoint-admin sign` signs is the model: the list travels inside the envelope.
    assert policy.model_dump(mode="json")["domain_lists"]["gambling"] == [
        "casino.example",
        "*.casino.example",
    ]


def test_file_reference_in_a_document_without_a_directory_is_refused() -> None:
    with pytest.raises(PolicyError, match="domain_lists"):
        parse_policy(POLICY, "payload")


@pytest.mark.parametrize("name", ["/etc/passwd", "../secret.txt"])
def test_list_files_must_stay_next_to_the_policy(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, POLICY.replace("lists/gambling.txt", name))
    with pytest.raises(PolicyError, match="relative path inside"):
        load_policy_file(path)


def test_bad_entry_in_a_list_file_names_the_list(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="domain_lists"):
        load_policy_file(_write(tmp_path, listing="ok.example\nbad*name.example\n"))


def test_unknown_domain_list_names_the_rule() -> None:
    text = "name: t\nversion: 1\nrules:\n  - {id: r, action: block, network: {domain_list: nope}}\n"
    with pytest.raises(PolicyError, match=r"rule r: network\.domain_list 'nope'"):
        parse_policy(text, "p")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{id: r, action: report, enforce: connection, network: {domain: a.example}}", "only for `action"),
        ("{id: r, action: block, enforce: connection, process: {name: x}}", "needs `network`"),
        (
            "{id: r, action: block, enforce: connection, process: {name: x}, network: {domain: a.example}}",
            "may only give `user`",
        ),
        ("{id: r, action: block, enforce: connection, network: {local_port: 22}}", "needs `network`"),
        (
            "{id: r, action: block, enforce: connection, network: {domain: a.example, direction: listen}}",
            "outbound",
        ),
    ],
)
def test_connection_enforcement_is_what_a_firewall_can_express(rule: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(f"name: t\nversion: 1\nrules:\n  - {rule}\n", "p")


def _proc(pid: int, name: str, user: str = "bob") -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=1, name=name, username=user, uid=1000, create_time=1.0)


def _query(pid: int, name: str) -> Connection:
    return Connection(
        pid,
        "ipv4",
        "udp",
        Endpoint("127.0.0.1", 40000),
        Endpoint("127.0.0.153", 53),
        "NONE",
        Direction.OUTBOUND,
        domain=name,
    )


def test_query_judged_by_domain_only_rules_with_process_conditions_and_unless(tmp_path: Path) -> None:
    compiled = compile_policy(load_policy_file(_write(tmp_path)))
    assert compiled.uses_domains
    assert [compiled.rules[i].id for i in compiled.connection_rules] == ["block-gambling"]
    assert query_rules(compiled, "www.example.org") == set()

    found = evaluate_query(compiled, _proc(10, "curl"), _query(10, "www.casino.example"))
    assert [(f.rule_id, f.action, f.enforce) for f in found] == [
        ("block-gambling", RuleAction.BLOCK, Enforce.CONNECTION)
    ]
    assert "DNS query for 'www.casino.example' matched domain '*.casino.example'" in found[0].reason
    assert found[0].connection is not None and found[0].connection.domain == "www.casino.example"

    # The port rule waits for the connection; the report rule needs firefox and not alice.
    assert [
        f.rule_id for f in evaluate_query(compiled, _proc(11, "firefox"), _query(11, "a.tracker.example"))
    ] == ["browsers-to-trackers"]
    assert evaluate_query(compiled, _proc(12, "curl"), _query(12, "a.tracker.example")) == []
    assert evaluate_query(compiled, _proc(13, "firefox", "alice"), _query(13, "a.tracker.example")) == []
    # An asker that could not be identified: rules with process conditions do not apply.
    unknown = _proc(0, "unknown")
    assert evaluate_query(compiled, unknown, _query(0, "a.tracker.example"), asker_known=False) == []
    assert len(evaluate_query(compiled, unknown, _query(0, "casino.example"), asker_known=False)) == 1
