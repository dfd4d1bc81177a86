"""ExecTriage on real processes: identify the binary, ask the policy once per binary, sort the exec."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from endpoint_agent.collect.exec_identity import command_line, holds_socket, identify
from endpoint_agent.exec_triage import ExecTriage, Verdict
from endpoint_agent.policy import CompiledPolicy, Policy, compile_policy
from tests.support import Listen, ProcessReaper, SpawnFn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")


def compiled(*rules: dict[str, Any]) -> CompiledPolicy:
    return compile_policy(Policy.model_validate({"name": "t", "version": 1, "rules": list(rules)}))


class Triage:
    def __init__(self, policy: CompiledPolicy | None) -> None:
        self.policy = policy
        self.digests: list[int] = []
        self.triage = ExecTriage(lambda: self.policy, digest=self._digest, package=lambda pid, exe: None)

    def _digest(self, pid: int, exe: str) -> str | None:
        self.digests.append(pid)
        return None

    def __call__(self, *pids: int) -> list[Verdict]:
        verdicts = self.triage(pids)
        return [verdicts[pid] for pid in pids]


def test_only_a_binary_a_rule_names_is_checked(spawn: SpawnFn) -> None:
    named = spawn("ea-tr-blocked", program="sleep")
    other = spawn("ea-tr-other", program="sleep")
    triage = Triage(compiled({"id": "b", "action": "block", "process": {"name": ["ea-tr-blocked"]}}))
    assert triage(named.pid, other.pid) == [Verdict.CHECK, Verdict.SKIP]
    assert triage.triage.stats.binaries == 2
    assert triage(other.pid) == [Verdict.SKIP]
    assert triage.triage.stats.binaries == 2  # answered from the cache


def test_a_new_policy_asks_again(spawn: SpawnFn) -> None:
    proc = spawn("ea-tr-later", program="sleep")
    triage = Triage(compiled({"id": "b", "action": "block", "process": {"name": ["nothing-like-it"]}}))
    assert triage(proc.pid) == [Verdict.SKIP]
    triage.policy = compiled({"id": "b", "action": "block", "process": {"name": ["ea-tr-later"]}})
    assert triage(proc.pid) == [Verdict.CHECK]
    assert triage.triage.stats.policy_changes == 1
    triage.policy = None
    assert triage(proc.pid) == [Verdict.SKIP]  # no policy: nothing would be evaluated


def test_a_process_already_gone_needs_nothing(reaper: ProcessReaper) -> None:
    done = subprocess.Popen(["/bin/true"])
    done.wait(10)
    triage = Triage(compiled({"id": "b", "action": "block", "process": {"name": ["true"]}}))
    assert triage(done.pid) == [Verdict.GONE]
    assert identify(done.pid) is None


def test_command_line_rules_look_at_each_process(spawn: SpawnFn) -> None:
    hit = spawn("ea-tr-java", args=("com.frostwire.Main",))
    miss = spawn("ea-tr-java2", args=("build.jar",))
    triage = Triage(compiled({"id": "c", "action": "block", "process": {"cmdline": [r"com\.frostwire\."]}}))
    assert triage(hit.pid, miss.pid) == [Verdict.CHECK, Verdict.SKIP]
    assert "com.frostwire.Main" in (command_line(hit.pid) or "")


def test_network_rules_make_a_probe_or_a_watch(spawn: SpawnFn) -> None:
    listener = spawn("ea-tr-listen", Listen("tcp", "127.0.0.1"))
    sleeper = spawn("ea-tr-quiet", program="sleep")
    network_only = Triage(compiled({"id": "n", "action": "block", "network": {"local_port": "6881-6889"}}))
    assert network_only(listener.pid, sleeper.pid) == [Verdict.PROBE, Verdict.PROBE]
    assert holds_socket(listener.pid) and not holds_socket(sleeper.pid)
    both = Triage(
        compiled(
            {"id": "n", "action": "block", "network": {"local_port": 6881}},
            {"id": "b", "action": "block", "process": {"name": ["ea-tr-quiet"]}},
        )
    )
    assert both(sleeper.pid) == [Verdict.WATCH]


def test_the_digest_is_read_only_for_sha256_rules(spawn: SpawnFn) -> None:
    proc = spawn("ea-tr-hashed", program="sleep")
    by_name = Triage(compiled({"id": "b", "action": "block", "process": {"name": ["x"]}}))
    by_name(proc.pid)
    assert by_name.digests == []
    by_hash = Triage(compiled({"id": "h", "action": "block", "process": {"sha256": ["0" * 64]}}))
    assert by_hash(proc.pid) == [Verdict.CHECK]  # digest unknown (None here): cannot be ruled out
    assert by_hash.digests == [proc.pid]


def test_identity_names_the_file_and_the_process(spawn: SpawnFn) -> None:
    proc = spawn("ea-tr-a-rather-long-name", program="sleep")
    found = identify(proc.pid)
    assert found is not None and found.identity is not None
    assert found.identity.exe == str(proc.exe)
    assert found.identity.name == "ea-tr-a-rather-long-name"  # comm is 15 characters; argv[0] completes it
    assert found.stat.comm == "ea-tr-a-rather-"
