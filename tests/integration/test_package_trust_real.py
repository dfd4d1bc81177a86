"""Package-manager trust on this machine: packaged executables are approved, a copy in /tmp is not.

The allowlist example policy (unapproved: block, trust_package_manager) is evaluated against a
real snapshot of the machine, with processes of an interactive-looking user (uid >= 1000)
running a packaged binary and a copy of it under /tmp.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoint_agent.collect import Collector
from endpoint_agent.collect.package_trust import has_package_database, system_package_resolver
from endpoint_agent.policy import UNAPPROVED_RULE_ID, compile_policy, evaluate, load_policy_file
from tests.support import ProcessReaper
from tests.support.ci_skip import require

REPO = Path(__file__).resolve().parents[2]
ALLOWLIST = REPO / "policies" / "examples" / "allowlist.yaml"
SLEEP = "/usr/bin/sleep"


def _interactive_uid() -> int:
    """A real user's uid if the machine has one (uid 1000-60000), else an unnamed one."""
    for entry in pwd.getpwall():
        if 1000 <= entry.pw_uid < 60000:
            return entry.pw_uid
    return 4242


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory under /tmp that another user may enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="ea-trust-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start_as(uid: int, exe: str | Path, reaper: ProcessReaper) -> int:
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    popen = subprocess.Popen(
        [str(exe), "60"], stdin=subprocess.DEVNULL, cwd="/", start_new_session=True, preexec_fn=drop
    )
    return reaper.track(popen).pid


def test_allowlist_trusts_packaged_executables_and_flags_a_copy_in_tmp(scratch: Path) -> None:
    if os.geteuid() != 0:
        require("needs root to run processes as another user")
    if not has_package_database() or not Path(SLEEP).exists():
        require("needs a dpkg/rpm machine with /usr/bin/sleep")
    resolver = system_package_resolver()
    assert resolver is not None
    uid = _interactive_uid()
    copy = scratch / "sleep-copy"
    shutil.copyfile(SLEEP, copy)
    copy.chmod(0o755)
    compiled = compile_policy(load_policy_file(ALLOWLIST))
    with ProcessReaper() as reaper:
        packaged_pid = _start_as(uid, SLEEP, reaper)
        copied_pid = _start_as(uid, copy, reaper)
        snapshot = Collector().snapshot()
        findings = evaluate(snapshot, compiled)
    packaged, copied = snapshot.processes[packaged_pid], snapshot.processes[copied_pid]
    assert packaged.uid == uid and packaged.package is not None  # coreutils
    assert copied.uid == uid and copied.package is None
    flagged = {f.process.pid: f for f in findings if f.rule_id == UNAPPROVED_RULE_ID}
    assert copied_pid in flagged
    assert str(copy) in flagged[copied_pid].reason
    assert packaged_pid not in flagged
    # No system process anywhere on the machine: nothing packaged, nothing of a system account.
    for finding in flagged.values():
        assert finding.process.package is None, finding.reason
        assert finding.process.uid is not None and finding.process.uid >= 1000, finding.reason
