"""`endpoint-agent scan` and `check-policy` as a user runs them: subprocess, real processes and sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from endpoint_admin.keygen import write_keypair
from endpoint_agent.policy import load_policy_file
from endpoint_contract.envelope import load_private_key, sign_policy
from tests.support import Listen, SpawnFn
from tests.support.contract import CONTRACT_KEYS

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "endpoint_agent", *args], capture_output=True, text=True, timeout=120
    )


def free_bittorrent_port() -> int:
    for port in range(6881, 6890):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("every BitTorrent port 6881-6889 on 127.0.0.1 is busy")


def test_default_policy_reports_p2p_name_and_port_with_contract_keys(spawn: SpawnFn) -> None:
    port = free_bittorrent_port()
    client = spawn("qbittorrent-nox", Listen("tcp", "127.0.0.1", port))

    result = agent("scan", "--policy", str(DEFAULT_POLICY), "--json")

    assert result.returncode == 1, result.stderr
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    mine = [f for f in findings if f["pid"] == client.pid]
    for finding in mine:
        assert finding.keys() >= CONTRACT_KEYS
        assert finding["action"] == "would_block"  # default policy is monitor mode; nothing signalled
        assert finding["detected_at"].endswith("Z")
    by_name = [f for f in mine if "connection" not in f]
    by_port = [f for f in mine if "connection" in f]
    assert by_name and "qbittorrent-nox" in by_name[0]["reason"]
    assert by_port and by_port[0]["connection"]["laddr"] == f"127.0.0.1:{port}"
    assert by_port[0]["connection"]["status"] == "LISTEN"
    assert psutil.pid_exists(client.pid)


def test_human_table_and_exit_zero_when_nothing_matches(tmp_path: Path, spawn: SpawnFn) -> None:
    spawn("harmless-helper")
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "name: t\nversion: 1\nrules:\n  - id: nothing\n    action: block\n"
        "    process: {name: no-such-process-anywhere-xyz}\n"
    )
    result = agent("scan", "--policy", str(policy))
    assert result.returncode == 0, result.stderr
    assert "No findings." in result.stdout


def test_human_table_lists_the_finding(tmp_path: Path, spawn: SpawnFn) -> None:
    client = spawn("tixati-standin")
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "name: t\nversion: 4\nrules:\n  - id: p2p-tixati\n    category: p2p\n    action: report\n"
        "    process: {name: tixati*}\n"
    )
    result = agent("scan", "--policy", str(policy))
    assert result.returncode == 1
    line = next(ln for ln in result.stdout.splitlines() if f" {client.pid} " in ln)
    assert line.split()[:2] == ["reported", "p2p-tixati"]


BAD_POLICIES = {
    "malformed-yaml": ("name: [unclosed\n", "invalid YAML"),
    "unknown-field": ("name: x\nversion: 1\ncolour: red\nrules: []\n", "colour"),
    "invalid-regex": (
        "name: x\nversion: 1\nrules:\n  - id: r1\n    action: block\n    process: {cmdline: '(['}\n",
        "rule 'r1'",
    ),
    "invalid-cidr": (
        "name: x\nversion: 1\nrules:\n  - id: r2\n    action: block\n"
        "    network: {remote_address: 10.0.0.0/33}\n",
        "network.remote_address",
    ),
    "wrong-type": ("name: x\nversion: one\nrules: []\n", "version"),
    "not-a-mapping": ("- just\n- a list\n", "mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
@pytest.mark.parametrize("command", ["check-policy", "scan"])
def test_bad_policy_is_one_clear_line_and_exit_2(tmp_path: Path, case: str, command: str) -> None:
    text, expected = BAD_POLICIES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    args = [command, str(path)] if command == "check-policy" else [command, "--policy", str(path)]

    result = agent(*args)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert str(path) in first and expected in first


@pytest.mark.parametrize("what", ["missing", "directory", "huge"])
def test_unusable_policy_file_is_one_line_exit_2(tmp_path: Path, what: str) -> None:
    path = tmp_path / "policy.yaml"
    if what == "directory":
        path.mkdir()
    elif what == "huge":
        with path.open("wb") as f:
            f.truncate(50 * 1024 * 1024)
    result = agent("check-policy", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr


def test_check_policy_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: x\nversion: 1\nrules:\n  - id: a\n    action: block\n    bogus: 1\n"
        "    network: {remote_address: 10.0.0.300/8}\n"
    )
    result = agent("check-policy", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("bogus" in ln for ln in lines) and any("remote_address" in ln for ln in lines)


def test_valid_policies_pass_check_policy() -> None:
    for path in [DEFAULT_POLICY, *sorted((ROOT / "policies" / "examples").glob("*.yaml"))]:
        result = agent("check-policy", str(path))
        assert result.returncode == 0, (path, result.stderr)
        assert "valid policy" in result.stdout


def test_signed_envelope_needs_and_accepts_a_trusted_key(tmp_path: Path) -> None:
    keys = write_keypair(tmp_path / "keys")
    policy = load_policy_file(DEFAULT_POLICY)
    envelope = tmp_path / "policy.envelope.json"
    envelope.write_bytes(sign_policy(policy, [load_private_key(keys.private_key)], "fleet-a"))

    unverified = agent("check-policy", str(envelope))
    assert unverified.returncode == 0 and "signature NOT verified" in unverified.stderr

    report_only = agent("scan", "--policy", str(envelope), "--json")
    assert report_only.returncode in (0, 1) and "signature NOT verified" in report_only.stderr

    # Never enforce on the strength of an envelope nobody could verify.
    refused = agent("scan", "--policy", str(envelope), "--enforce")
    assert refused.returncode == 2 and "pass --public-key" in refused.stderr
    assert "Traceback" not in refused.stderr

    tampered = tmp_path / "tampered.json"
    raw = json.loads(envelope.read_bytes())
    raw["signatures"] = []
    tampered.write_text(json.dumps(raw))
    stripped = agent("check-policy", str(tampered), "--public-key", str(keys.public_key))
    assert stripped.returncode == 2 and "not signed" in stripped.stderr

    verified = agent("check-policy", str(envelope), "--public-key", str(keys.public_key))
    assert verified.returncode == 0, verified.stderr

    other = write_keypair(tmp_path / "other")
    foreign = agent("check-policy", str(envelope), "--public-key", str(other.public_key))
    assert foreign.returncode == 2 and "Traceback" not in foreign.stderr


def test_bad_arguments_exit_2_without_traceback() -> None:
    for args in (["scan"], ["no-such-command"], ["scan", "--policy"]):
        result = agent(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
