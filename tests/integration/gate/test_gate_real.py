"""The exec gate for real: fanotify permission events in a private mount namespace.

Every gate here runs inside `unshare --mount --propagation private` (tests/support/gate_ns.py),
marking that namespace's copies of the mounts only: execs anywhere else are never gated.
Needs root and a kernel with FAN_OPEN_EXEC_PERM; skipped otherwise, failed under CI=true.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci_skip import require
from tests.support.gate_ns import GateNamespace, unavailable

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def bin_dir() -> Iterator[Path]:
    """Programs every user may run (copies of /bin/true under distinct names and contents)."""
    require(unavailable())
    path = Path(tempfile.mkdtemp(prefix="gatetest-"))
    path.chmod(0o755)
    for name in ("gatetest-byname", "fine-tool", "held-tool", "later-tool"):
        shutil.copy("/bin/true", path / name)
    (path / "denied-dir").mkdir(mode=0o755)
    shutil.copy("/bin/true", path / "denied-dir" / "anything")
    hashed = path / "hashed-tool"
    hashed.write_bytes(
        Path("/bin/true").read_bytes() + b"gatetest-unique-tail"
    )  # runs the same, hashes apart
    hashed.chmod(0o755)
    shutil.copy(sys_python(), path / "python3-copy")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sys_python() -> str:
    import sys

    return os.path.realpath(sys.executable)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def policy(bin_dir: Path, *, mode: str = "enforce", extra: str = "") -> str:
    return f"""
name: gate-test
version: 1
mode: {mode}
unapproved: {{action: block, min_uid: 1000}}
rules:
  - {{id: by-name, action: block, process: {{name: gatetest-byname}}}}
  - {{id: by-path, action: block, process: {{path: '{bin_dir}/denied-dir/*'}}}}
  - {{id: by-hash, action: block, process: {{sha256: '{sha256_of(bin_dir / "hashed-tool")}'}}}}
  - {{id: no-python, action: block, process: {{name: 'python3*'}}}}
  - {{id: approved-tools, action: allow, process: {{name: [fine-tool, held-tool, later-tool]}}}}
{extra}"""


@pytest.fixture(scope="module")
def ns(bin_dir: Path) -> Iterator[GateNamespace]:
    with GateNamespace(policy(bin_dir)) as gate:
        status = gate.wait_ready()
        assert status["dry_run"]["safe"], status
        yield gate


def reported(ns: GateNamespace, **match: object) -> dict[str, object]:
    """The first report with these keys (reports reach the supervisor within a ping or so)."""
    deadline = time.monotonic() + 10
    while True:
        for report in ns.reports():
            if all(report.get(k) == v for k, v in match.items()):
                return report
        assert time.monotonic() < deadline, f"no report {match}: {ns.reports()}"
        time.sleep(0.1)


def test_denied_by_name_path_and_hash_while_others_run(ns: GateNamespace, bin_dir: Path) -> None:
    assert ns.run([str(bin_dir / "gatetest-byname")])["errno"] == errno.EPERM
    assert ns.run([str(bin_dir / "denied-dir" / "anything")])["errno"] == errno.EPERM
    assert ns.run([str(bin_dir / "hashed-tool")])["errno"] == errno.EPERM
    assert ns.run([str(bin_dir / "fine-tool")])["rc"] == 0
    assert ns.run(["/bin/true"])["rc"] == 0
    for rule in ("by-path", "by-hash"):
        reported(ns, rule_id=rule, outcome="denied")
    assert str(reported(ns, rule_id="by-name", outcome="denied")["exe"]).endswith("gatetest-byname")


def test_a_retry_loop_is_reported_once(ns: GateNamespace, bin_dir: Path) -> None:
    before = len([r for r in ns.reports() if r["rule_id"] == "by-name"])
    for _ in range(5):
        assert ns.run([str(bin_dir / "gatetest-byname")])["errno"] == errno.EPERM
    after = len([r for r in ns.reports() if r["rule_id"] == "by-name"])
    assert after - before <= 1


def test_unapproved_programs_are_denied_to_users_but_packaged_ones_run(
    ns: GateNamespace, bin_dir: Path
) -> None:
    shutil.copy("/bin/true", bin_dir.parent / f"{bin_dir.name}-unapproved")  # outside the allow rule's dir
    stray = bin_dir.parent / f"{bin_dir.name}-unapproved"
    try:
        as_user = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]
        assert ns.run([*as_user, "/bin/true"])["rc"] == 0  # owned by a package
        assert ns.run([*as_user, str(bin_dir / "fine-tool")])["rc"] == 0  # approved by an allow rule
        result = ns.run([*as_user, str(stray)])
        assert result["rc"] != 0 and "not permitted" in result["stderr"], result
        assert ns.run([str(stray)])["rc"] == 0  # root is not an interactive user (min_uid)
    finally:
        stray.unlink()
    reported(ns, rule_id="unapproved-app", uid=1000)


def test_the_agents_interpreter_is_protected_but_a_copy_is_not(ns: GateNamespace, bin_dir: Path) -> None:
    assert ns.run([sys_python(), "-c", "pass"])["rc"] == 0
    assert ns.run([str(bin_dir / "python3-copy"), "-c", "pass"])["errno"] == errno.EPERM


def test_monitor_mode_allows_and_reports_would_block(ns: GateNamespace, bin_dir: Path) -> None:
    ns.call("mode", enforce=False, reason="break-glass file present")
    try:
        deadline = time.monotonic() + 10
        while ns.run([str(bin_dir / "denied-dir" / "anything")])["rc"] != 0:
            assert time.monotonic() < deadline, "monitor mode never reached the gate"
            time.sleep(0.1)
        reported(ns, outcome="would_block", rule_id="by-path")
    finally:
        ns.call("mode", enforce=True, reason="policy mode is enforce")
    deadline = time.monotonic() + 10
    while ns.run([str(bin_dir / "denied-dir" / "anything")])["errno"] != errno.EPERM:
        assert time.monotonic() < deadline, "enforcement never came back"
        time.sleep(0.1)


def test_a_mount_added_after_start_is_gated(ns: GateNamespace, bin_dir: Path) -> None:
    target = f"/tmp/gatetest-mnt-{os.getpid()}"
    ns.call("mount_tmpfs", path=target)  # inside the namespace only
    ns.call("copy", src=str(bin_dir / "gatetest-byname"), dst=f"{target}/gatetest-byname")
    ns.call("copy", src=str(bin_dir / "fine-tool"), dst=f"{target}/fine-tool")
    deadline = time.monotonic() + 10
    while ns.run([f"{target}/gatetest-byname"])["errno"] != errno.EPERM:
        assert time.monotonic() < deadline, "the new mount was never marked"
        time.sleep(0.1)
    assert ns.run([f"{target}/fine-tool"])["rc"] == 0
    assert not os.path.exists(f"{target}/fine-tool")  # the mount is not seen outside


def test_a_stopped_gate_is_killed_and_execs_continue(bin_dir: Path) -> None:
    with GateNamespace(policy(bin_dir)) as gate:
        gate.wait_ready()
        first = gate.call("signal_gate", sig=int(signal.SIGSTOP))
        result = gate.run([str(bin_dir / "held-tool")], timeout=30)  # a new file: the kernel asks the gate
        assert result["rc"] == 0, result  # released when the supervisor killed the stopped gate
        deadline = time.monotonic() + 60
        while not ((status := gate.status())["restarts"] >= 1 and status["state"] == "on"):
            assert time.monotonic() < deadline, f"the gate was not restarted: {status}"
            time.sleep(0.1)
        assert status["pid"] != first
        assert any(e["type"] == "gate_failed" for e in gate.events())
        assert gate.run([str(bin_dir / "gatetest-byname")])["errno"] == errno.EPERM  # and it judges again


def test_a_huge_binary_is_allowed_first_then_denied(tmp_path: Path) -> None:
    require(unavailable())
    base = Path(tempfile.mkdtemp(prefix="gatetest-huge-"))
    try:
        huge = base / "huge-tool"
        shutil.copy("/bin/true", huge)
        os.truncate(huge, 1 << 30)  # sparse: 1 GiB that still runs as /bin/true
        digest = sha256_of(huge)
        rule = f"  - {{id: huge, action: block, process: {{sha256: '{digest}'}}}}\n"
        text = f"name: huge\nversion: 1\nmode: enforce\nrules:\n{rule}"
        with GateNamespace(text) as gate:
            gate.wait_ready()
            first = gate.run([str(huge)])
            assert first["rc"] == 0, first  # not judged within the deadline: allowed
            deadline = time.monotonic() + 120
            while gate.run([str(huge)])["errno"] != errno.EPERM:
                assert time.monotonic() < deadline, "the background judgement never arrived"
                time.sleep(0.5)
            assert gate.status()["deadline_misses"] >= 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_gate_can_mark_another_namespaces_mounts(bin_dir: Path) -> None:
    """exec_gate_mounts: init (a service in a namespace of its own gates the machine's execs), shown
    with two private namespaces: the gate lives in one and marks the other's mounts through
    /proc/PID/root; the machine's own mounts are never marked."""
    other = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sleep", "600"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{other.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare never entered its namespace"
            time.sleep(0.05)
        with GateNamespace(policy(bin_dir), mounts_of_pid=other.pid) as gate:
            status = gate.wait_ready()
            assert status["covers_machine"] is False
            inside_other = [
                "nsenter",
                f"--target={other.pid}",
                "--mount",
                "--",
                str(bin_dir / "gatetest-byname"),
            ]
            refused = subprocess.run(inside_other, capture_output=True, text=True, timeout=30, check=False)
            assert refused.returncode != 0 and "not permitted" in refused.stderr, refused
            assert gate.run([str(bin_dir / "gatetest-byname")])["rc"] == 0  # its own namespace: not marked
    finally:
        other.kill()
        other.wait()
