"""Bad input: every failure is one clear line naming the file, the rule and the field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from endpoint_agent.errors import PolicyLoadError, PolicySignatureError, PolicyValidationError
from endpoint_agent.policy import (
    MAX_POLICY_BYTES,
    Mode,
    Policy,
    UnapprovedAction,
    load_policy_file,
    parse_policy,
)

GOOD = """\
name: t
version: 2
rules:
  - id: p2p-qbittorrent
    action: block
    process: {name: qbittorrent}
"""


def _rules(*rules: str) -> str:
    return "name: t\nversion: 1\nrules:\n" + "".join(f"  - {r}\n" for r in rules)


def _invalid(text: str) -> PolicyValidationError:
    with pytest.raises(PolicyValidationError) as info:
        parse_policy(text, "p.yaml")
    err = info.value
    for line in [str(err), *err.errors]:
        assert "\n" not in line and line.startswith("p.yaml: "), line
    return err


def _load_error(text: str | bytes) -> str:
    with pytest.raises(PolicyLoadError) as info:
        parse_policy(text, "p.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("p.yaml: "), message
    return message


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    policy = load_policy_file(path)
    assert (policy.name, policy.version, policy.mode) == ("t", 2, Mode.MONITOR)
    assert policy.rules[0].process is not None and policy.rules[0].process.name == ("qbittorrent",)


def test_a_json_policy_loads() -> None:
    policy = parse_policy(json.dumps({"name": "j", "version": 1, "rules": []}), "p.json")
    assert policy.name == "j"


def test_the_json_dump_round_trips() -> None:
    """The signed envelope carries `model_dump(mode="json")`; it must validate back unchanged."""
    policy = load_policy_file(Path(__file__).resolve().parents[3] / "policies" / "default.yaml")
    assert Policy.model_validate(json.loads(json.dumps(policy.model_dump(mode="json")))) == policy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: t\nversion: 1\nrules: [\n", "p.yaml: invalid YAML at line"),
        ("name: t\n  version: 1\n", "p.yaml: invalid YAML at line 2"),
        ("- a\n- b\n", "p.yaml: top level must be a mapping (name, version, rules), got a list"),
        ("just a string\n", "got a str"),
        ("", "p.yaml: is empty"),
        ("# only a comment\n", "p.yaml: is empty"),
        ("name: t\nversion: 1\nname: u\n", "p.yaml: invalid YAML at line 3, column 1: duplicate key 'name'"),
        ("a: &x [1]\nb: *x\n", "aliases (*name) are not allowed"),
        ("name: t\n---\nname: u\n", "p.yaml: invalid YAML"),
    ],
)
def test_not_a_policy_document(text: str, expected: str) -> None:
    assert expected in _load_error(text)


def test_billion_laughs_is_refused_at_once() -> None:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 30)]
    assert "aliases (*name) are not allowed" in _load_error("\n".join(lines))


def test_an_anchor_without_alias_is_harmless() -> None:
    assert parse_policy("name: &n t\nversion: 1\n", "p.yaml").name == "t"


def test_non_utf8_bytes() -> None:
    assert "is not UTF-8 text" in _load_error(b"name: \xff\xfe\n")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    assert "p.yaml: invalid YAML" in _load_error("a: " + "[" * 100_000)


def test_text_over_the_size_cap() -> None:
    assert "over the 4 MiB limit" in _load_error("#" * (MAX_POLICY_BYTES + 1))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match=r"nope\.yaml: no such file$"):
        load_policy_file(tmp_path / "nope.yaml")


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="is a directory, expected a policy file"):
        load_policy_file(tmp_path)


def test_a_50_mb_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:  # sparse: 50 MB on paper, nothing on disk
        handle.truncate(50 * 1024 * 1024)
    with pytest.raises(PolicyLoadError, match=r"huge\.yaml: is 52428800 bytes, over the 4 MiB limit"):
        load_policy_file(path)


def test_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PolicyLoadError, match="is not a regular file"):
        load_policy_file(fifo)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(GOOD)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything; use a path component that is not a directory
        path = tmp_path / "secret.yaml" / "child"
    with pytest.raises(PolicyLoadError, match=r"secret\.yaml"):
        load_policy_file(path)


def test_unknown_fields_name_the_rule_and_suggest() -> None:
    err = _invalid(_rules("{id: r1, action: block, process: {nmae: x}}"))
    assert err.errors == [
        "p.yaml: rule 'r1' (rules[0]) field process.nmae: unknown field (did you mean 'name'?); "
        "allowed: name, path, sha256, cmdline, user, parent"
    ]
    top = _invalid("name: t\nversion: 1\nrulez: []\n")
    assert top.errors[0].startswith("p.yaml: field rulez: unknown field (did you mean 'rules'?)")


def test_invalid_regex() -> None:
    err = _invalid(_rules("{id: r1, action: block, process: {cmdline: ['ok', '(']}}"))
    assert len(err.errors) == 1
    assert err.errors[0].startswith(
        "p.yaml: rule 'r1' (rules[0]) field process.cmdline[1]: invalid regex '(': "
    )


def test_invalid_cidr_and_host_bits() -> None:
    err = _invalid(
        _rules("{id: n, action: report, network: {remote_address: [10.0.0.0/33, 10.1.0.0/8, bogus]}}")
    )
    assert err.errors == [
        "p.yaml: rule 'n' (rules[0]) field network.remote_address[0]: "
        "'10.0.0.0/33' is not an IP address or CIDR",
        "p.yaml: rule 'n' (rules[0]) field network.remote_address[1]: '10.1.0.0/8' has host bits set "
        "(did you mean 10.0.0.0/8?)",
        "p.yaml: rule 'n' (rules[0]) field network.remote_address[2]: 'bogus' is not an IP address or CIDR",
    ]


@pytest.mark.parametrize(
    ("port", "problem"),
    [
        ("70000", "port 70000 is out of range 1-65535"),
        ("0", "port 0 is out of range 1-65535"),
        ('"6889-6881"', "range '6889-6881' is reversed (low > high)"),
        ('"68a1"', "'68a1' is not a port or a range 'low-high'"),
        ("true", "expected a port (1-65535) or a range 'low-high', got bool"),
        ('"1-70000"', "port 70000 is out of range 1-65535"),
    ],
)
def test_bad_ports(port: str, problem: str) -> None:
    err = _invalid(_rules(f"{{id: ports, action: block, network: {{local_port: [{port}]}}}}"))
    assert err.errors == [f"p.yaml: rule 'ports' (rules[0]) field network.local_port[0]: {problem}"]


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (
            'name: t\nversion: "three"\n',
            "p.yaml: field version: input should be a valid integer (got 'three')",
        ),
        (
            "name: t\nversion: 0\n",
            "p.yaml: field version: input should be greater than or equal to 1 (got 0)",
        ),
        ("name: t\nversion: 1.5\n", "p.yaml: field version: input should be a valid integer (got 1.5)"),
        ("version: 1\n", "p.yaml: field name: is required"),
        ("name: t\n", "p.yaml: field version: is required"),
        (
            "name: t\nversion: 1\nmode: enforcing\n",
            "p.yaml: field mode: input should be 'monitor' or 'enforce'",
        ),
        ("name: t\nversion: 1\nrules: {}\n", "p.yaml: field rules: input should be a valid tuple"),
        (
            "name: t\nversion: 1\nunapproved: {min_uid: -1}\n",
            "p.yaml: field unapproved.min_uid: input should be",
        ),
        (
            "name: t\nversion: 1\nunapproved: {action: maybe}\n",
            "p.yaml: field unapproved.action: input should be",
        ),
        ("name: 5\nversion: 1\n", "p.yaml: field name: expected a string, got int 5 (quote it)"),
        ("name: t\nversion: 1\ndefaults: {help_url: 'javascript:alert(1)'}\n", "is not an http(s) URL"),
    ],
)
def test_wrong_types_at_the_top(top: str, expected: str) -> None:
    err = _invalid(top)
    assert any(expected in line for line in err.errors), err.errors


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            "{id: r, action: block}",
            "p.yaml: rule 'r' (rules[0]): has no conditions; give `process`, `network` or both",
        ),
        (
            "{id: r, action: block, process: {}}",
            "p.yaml: rule 'r' (rules[0]) field process: is empty; give at least",
        ),
        (
            "{id: r, action: block, network: {}}",
            "p.yaml: rule 'r' (rules[0]) field network: is empty; give at least",
        ),
        ("{id: r, action: block, process: {name: []}}", "field process.name: must not be an empty list"),
        ("{id: r, action: block, process: {name: ''}}", "field process.name[0]: must not be empty"),
        (
            "{id: r, action: nuke, process: {name: x}}",
            "field action: input should be 'allow', 'report' or 'block'",
        ),
        (
            "{id: r, action: block, enabled: 'yes', process: {name: x}}",
            "field enabled: input should be a valid boolean",
        ),
        ("{id: 'bad id!', action: block, process: {name: x}}", "field id: 'bad id!' is not a valid rule id"),
        (
            "{id: r, action: block, process: {name: /usr/bin/x}}",
            "looks like a path; names are matched without",
        ),
        (
            "{id: r, action: block, process: {path: bin/x}}",
            "field process.path[0]: 'bin/x' is not an absolute path",
        ),
        ("{id: r, action: block, process: {sha256: abc}}", "field process.sha256[0]: 'abc' is not a SHA-256"),
        ("{id: r, action: block, process: {name: '[z-a]'}}", "field process.name[0]: invalid glob '[z-a]'"),
        (
            "{id: r, action: block, network: {protocol: sctp}}",
            "field network.protocol[0]: input should be 'tcp' or",
        ),
        (
            "{id: r, action: block, network: {direction: sideways}}",
            "field network.direction[0]: input should be",
        ),
        (
            "{id: r, action: allow, network: {remote_port: 22}}",
            "an allow rule approves processes and cannot have",
        ),
        (
            "{id: unapproved-app, action: block, process: {name: x}}",
            "is reserved for the unapproved-apps check",
        ),
        ("{id: r, action: block, process: {name: x}, unless: {nmae: y}}", "field unless.nmae: unknown field"),
        ("not-a-mapping", "p.yaml: rules[0] (no id): must be a mapping, got string"),
    ],
)
def test_bad_rules(rule: str, expected: str) -> None:
    err = _invalid(_rules(rule))
    assert len(err.errors) == 1 and expected in err.errors[0], err.errors


def test_a_rule_without_id_is_named_by_index() -> None:
    err = _invalid(
        _rules("{id: ok, action: block, process: {name: x}}", "{action: block, process: {name: y}}")
    )
    assert err.errors == ["p.yaml: rules[1] (no id) field id: is required"]


def test_duplicate_rule_ids_are_all_reported() -> None:
    err = _invalid(
        _rules(
            "{id: a, action: block, process: {name: x}}",
            "{id: b, action: block, process: {name: y}}",
            "{id: a, action: report, process: {name: z}}",
            "{id: b, action: report, process: {name: w}}",
        )
    )
    assert err.errors == [
        "p.yaml: rule 'a' (rules[2]) field id: duplicate rule id 'a', first used by rules[0]",
        "p.yaml: rule 'b' (rules[3]) field id: duplicate rule id 'b', first used by rules[1]",
    ]


def test_all_problems_are_listed_and_the_message_is_one_line() -> None:
    err = _invalid(
        _rules(
            "{id: a, action: block, process: {cmdline: '('}}",
            "{id: a, action: block, network: {remote_port: 99999}}",
            "{action: block}",
        )
    )
    assert len(err.errors) == 4, err.errors
    assert str(err) == f"{err.errors[0]} (and 3 more)"
    assert (
        err.errors[3] == "p.yaml: rule 'a' (rules[1]) field id: duplicate rule id 'a', first used by rules[0]"
    )


def test_bare_yaml_off_means_off() -> None:
    policy = parse_policy("name: t\nversion: 1\nunapproved: {action: off}\n", "p.yaml")
    assert policy.unapproved.action is UnapprovedAction.OFF


def test_values_may_be_one_value_or_a_list() -> None:
    policy = parse_policy(
        _rules("{id: r, action: block, process: {name: X}, network: {protocol: TCP, direction: Listen}}"),
        "p.yaml",
    )
    rule = policy.rules[0]
    assert rule.process is not None and rule.network is not None
    assert rule.process.name == ("X",)
    assert [p.value for p in rule.network.protocol or ()] == ["tcp"]
    assert [d.value for d in rule.network.direction or ()] == ["listen"]


# --- signed envelopes ------------------------------------------------------------------


def _envelope(tmp_path: Path) -> Path:
    path = tmp_path / "policy.signed.json"
    path.write_text(json.dumps({"payload": "e30=", "signatures": []}))
    return path


def test_an_envelope_needs_trusted_keys(tmp_path: Path) -> None:
    path = _envelope(tmp_path)
    with pytest.raises(
        PolicyLoadError, match=r"policy\.signed\.json: is a signed envelope; pass trusted keys"
    ):
        load_policy_file(path)
    with pytest.raises(PolicyLoadError, match="is a signed envelope"):
        parse_policy(path.read_text(), "x")


def test_the_envelope_hook_may_return_document_bytes_or_a_policy(tmp_path: Path) -> None:
    path = _envelope(tmp_path)
    seen: list[bytes] = []

    def to_bytes(raw: bytes) -> bytes:
        seen.append(raw)
        return GOOD.encode()

    assert load_policy_file(path, decode_envelope=to_bytes).version == 2
    assert seen == [path.read_bytes()]
    policy = parse_policy(GOOD, "inner")
    assert load_policy_file(path, decode_envelope=lambda raw: policy) is policy


def test_a_bad_payload_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        PolicyValidationError, match=r"policy\.signed\.json \(signed payload\): field version"
    ):
        load_policy_file(_envelope(tmp_path), decode_envelope=lambda raw: b"name: t\nversion: 0\n")


def test_signature_errors_from_the_hook_propagate(tmp_path: Path) -> None:
    def refuse(raw: bytes) -> bytes:
        raise PolicySignatureError("policy.signed.json: no trusted signature")

    with pytest.raises(PolicySignatureError):
        load_policy_file(_envelope(tmp_path), decode_envelope=refuse)
