"""The gate's decision table: cache, waits for facts, safety rails, the dry run (no fanotify)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.gate.facts import FactsReader, FileFacts
from endpoint_agent.gate.table import Answer, FileJob, Table, UserJob, assess
from endpoint_agent.policy import compile_policy, parse_policy
from endpoint_agent.policy.exec_time import ExecFile, ExecTimePolicy, ExecUser


def exec_policy(rules: str, unapproved: str = "") -> ExecTimePolicy:
    text = f"name: t\nversion: 1\nmode: enforce\n{unapproved}rules:\n{rules}"
    return ExecTimePolicy.of(compile_policy(parse_policy(text, "t")))


BLOCK_TOOL = "  - {id: no-tool, action: block, process: {name: tool}}\n"
KEY = (1, 2, 3, 4, 5)


def st_of(tmp_path: Path, name: str = "tool") -> os.stat_result:
    path = tmp_path / name
    path.write_bytes(b"\x7fELF")
    return os.stat(path)


def table(policy: ExecTimePolicy, *, enforce: bool = True, uid: int | None = 1000) -> Table:
    t = Table(policy, Guard(agent_pid=1), enforce=enforce, uid_of=lambda pid: uid)
    t.set_safety(True, "test")
    return t


def test_unknown_file_waits_for_facts_then_is_cached(tmp_path: Path) -> None:
    t = table(exec_policy(BLOCK_TOOL))
    st = st_of(tmp_path)
    assert t.decide(KEY, 10, st) == FileJob(KEY)
    t.add_file(KEY, FileFacts(ExecFile("/tmp/x/tool"), system_file=False))
    answer = t.decide(KEY, 10, st)
    assert isinstance(answer, Answer) and not answer.allow and answer.outcome == "denied"
    assert t.decide(KEY, 11, st) == answer
    assert t.stats.cache_hits == 1 and t.stats.cache_misses == 1


def test_monitor_mode_and_an_unsafe_policy_allow_with_would_block(tmp_path: Path) -> None:
    t = table(exec_policy(BLOCK_TOOL), enforce=False)
    st = st_of(tmp_path)
    t.add_file(KEY, FileFacts(ExecFile("/tmp/x/tool"), system_file=False))
    answer = t.decide(KEY, 10, st)
    assert isinstance(answer, Answer) and answer.allow and answer.outcome == "would_block"
    t.set_mode(True, "policy mode is enforce")
    answer = t.decide(KEY, 10, st)
    assert isinstance(answer, Answer) and not answer.allow
    t.set_safety(False, "unsafe")
    answer = t.decide(KEY, 10, st)
    assert isinstance(answer, Answer) and answer.allow and answer.outcome == "would_block"


def test_protected_programs_and_the_interpreter_are_never_denied(tmp_path: Path) -> None:
    t = table(exec_policy("  - {id: no-sshd, action: block, process: {name: 'sshd'}}\n"))
    st = st_of(tmp_path, "sshd")  # owned by root here: a system file
    t.add_file(KEY, FileFacts(ExecFile("/usr/sbin/sshd"), system_file=True))
    answer = t.decide(KEY, 10, st)
    assert isinstance(answer, Answer) and answer.allow and answer.protected
    own = table(exec_policy(BLOCK_TOOL))
    st = st_of(tmp_path)
    own = Table(own.policy, Guard(agent_pid=1), enforce=True, protected_files=[(st.st_dev, st.st_ino)])
    own.set_safety(True, "test")
    own.add_file(KEY, FileFacts(ExecFile("/x/tool"), system_file=False))
    answer = own.decide(KEY, 10, st)
    assert isinstance(answer, Answer) and answer.allow and answer.protected


def test_user_dependent_verdicts_wait_for_the_user_name(tmp_path: Path) -> None:
    t = table(exec_policy("  - {id: kid, action: block, process: {name: tool, user: kid}}\n"), uid=1001)
    st = st_of(tmp_path)
    t.add_file(KEY, FileFacts(ExecFile("/x/tool"), system_file=True))
    assert t.decide(KEY, 10, st) == UserJob(1001)
    t.add_user(ExecUser(1001, "kid"))
    answer = t.decide(KEY, 10, st)
    assert isinstance(answer, Answer) and not answer.allow and not answer.ignorable


def test_scripts_are_left_to_their_interpreter_and_system_files_may_be_ignored(tmp_path: Path) -> None:
    t = table(exec_policy(BLOCK_TOOL))
    st = st_of(tmp_path)
    t.add_file(KEY, FileFacts(None, system_file=False))  # not ELF
    assert t.decide(KEY, 10, st) == Answer(True)
    other = (9, 9, 9, 9, 9)
    t.add_file(other, FileFacts(ExecFile("/usr/bin/ls"), system_file=True))
    answer = t.decide(other, 10, st)
    assert isinstance(answer, Answer) and answer.allow and answer.ignorable


def test_stats_report_rates_and_percentiles() -> None:
    t = table(exec_policy(BLOCK_TOOL))
    for ns in range(1, 101):
        t.stats.time(ns * 1000)
    t.stats.cache_hits, t.stats.cache_misses = 3, 1
    out = t.stats.to_json()
    assert out["cache_hit_rate"] == 0.75 and out["p50_ms"] == 0.051 and out["p99_ms"] == 0.1


def test_dry_run_flags_a_policy_denying_protected_or_too_many_programs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sshd", "ls", "cat", "tool"):
        shutil.copy("/bin/true", bin_dir / name)
    programs = [str(p) for p in bin_dir.iterdir()]
    reader = FactsReader(hashes=False, packages=None)
    guard = Guard(agent_pid=1)
    fine = assess(exec_policy(BLOCK_TOOL), reader, guard, max_share=0.5, programs=programs)
    assert fine.safe and fine.denied == 1 and fine.programs == 4
    wide = assess(exec_policy(BLOCK_TOOL), reader, guard, max_share=0.1, programs=programs)
    assert not wide.safe and "more than the allowed share" in wide.reason
    sshd = assess(
        exec_policy("  - {id: no-ssh, action: block, process: {name: 'ssh*'}}\n"),
        reader,
        guard,
        max_share=1.0,
        programs=programs,
    )
    assert not sshd.safe and "protected programs" in sshd.reason
