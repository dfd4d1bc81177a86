"""BudgetedHasher: small files at once, big ones queued behind a byte budget, rewrites deferred."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import pytest

from endpoint_agent.collect.hashing import REHASH_LIMIT, BudgetedHasher, FileVersion
from endpoint_agent.collect.incremental import IncrementalCollector
from tests.support import ProcessReaper, SpawnFn

MiB = 2**20


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def sparse(path: Path, size: int) -> Path:
    path.write_bytes(b"\x7fELF")
    os.truncate(path, size)
    return path


def test_a_small_file_is_hashed_at_once(tmp_path: Path) -> None:
    f = tmp_path / "small"
    f.write_bytes(b"x" * 1000)
    hasher = BudgetedHasher()
    result = hasher.cache.read(str(f), FileVersion.of(os.stat(f)), display_path=str(f))
    assert result.sha256 == hashlib.sha256(b"x" * 1000).hexdigest()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/exe")
def test_big_files_are_queued_and_hashed_in_the_background_at_the_budget(
    tmp_path: Path, spawn: SpawnFn
) -> None:
    me = spawn("ea-hash-self", program="sleep")  # any process: its exe is hashed inline (small)
    hasher = BudgetedHasher(rate=256 * MiB, inline_bytes=4 * MiB)
    try:
        assert hasher.digest(me.pid, str(me.exe)).sha256 is not None  # small: at once
        bigs = [sparse(tmp_path / f"big{i}", 64 * MiB) for i in range(3)]
        # A file is hashed where the process runs it; here the path stands in for /proc/<pid>/exe.
        results = [hasher.enqueue_path(str(b)) for b in bigs]
        assert all(r.pending and r.sha256 is None for r in results)
        wait_for(lambda: hasher.queue_length() == 0 and hasher.cache.stats.files_hashed >= 4)
        expected = hashlib.sha256(bigs[0].read_bytes()).hexdigest()
        assert hasher.cache.cached(FileVersion.of(os.stat(bigs[0]))) == expected
    finally:
        hasher.close()


def test_the_smallest_queued_file_goes_first_and_one_place_per_file(tmp_path: Path) -> None:
    hasher = BudgetedHasher(rate=MiB)
    hasher._closed = True  # no worker: look at the queue itself
    files = {n: sparse(tmp_path / n, size) for n, size in (("a", 300 * MiB), ("b", 5 * MiB), ("c", 90 * MiB))}
    for f in files.values():
        hasher.enqueue_path(str(f))
    rewritten = sparse(tmp_path / "a", 301 * MiB)  # the same file (same inode) rewritten
    hasher.enqueue_path(str(rewritten))
    order = []
    while (job := hasher._next_job()) is not None:
        order.append((Path(job.path).name, job.size))
    assert order == [("b", 5 * MiB), ("c", 90 * MiB), ("a", 301 * MiB)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/exe")
def test_a_file_rewritten_over_and_over_is_deferred(tmp_path: Path, reaper: ProcessReaper) -> None:
    import shutil
    import subprocess

    from tests.support.reaper import die_with_parent

    exe = tmp_path / "rewritten"
    hasher = BudgetedHasher()
    results = []
    for i in range(REHASH_LIMIT + 1):
        shutil.copyfile(shutil.which("sleep") or "/bin/sleep", exe)
        with exe.open("ab") as f:
            f.write(str(i).encode())  # new content, same inode: a new version to hash
        exe.chmod(0o755)
        proc = reaper.track(
            subprocess.Popen([str(exe), "60"], start_new_session=True, preexec_fn=die_with_parent())
        )
        results.append(hasher.digest(proc.pid, str(exe)))
        reaper.reap_one(proc.pid)
    assert all(r.sha256 for r in results[:REHASH_LIMIT])
    assert results[-1].sha256 is None and results[-1].pending and hasher.deferred == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_the_collector_hashes_only_while_the_policy_wants_digests(spawn: SpawnFn) -> None:
    me = spawn("ea-hash-want", program="sleep")
    wanted = [False]
    collector = IncrementalCollector(want_hashes=lambda: wanted[0])
    first = collector.snapshot()
    assert first.processes[me.pid].sha256 is None and collector.hash_stats.files_hashed == 0
    wanted[0] = True
    second = collector.snapshot()  # the cached record gets its digest without a re-read
    assert second.processes[me.pid].sha256 == hashlib.sha256(Path(me.exe).read_bytes()).hexdigest()
