"""Rollout buckets: stable across processes (sha256, not hash()), spread evenly, monotone."""

from __future__ import annotations

import subprocess
import sys
import uuid

from server_stub.rollout import bucket, choose_version
from tests.support.server import REPO_ROOT, subprocess_env


def test_bucket_is_the_same_in_another_interpreter() -> None:
    # Another process with another hash seed computes the same buckets.
    hosts = [str(uuid.UUID(int=i)) for i in range(20)]
    code = "from server_stub.rollout import bucket; import sys; print([bucket(h, 7) for h in sys.argv[1:]])"
    out = subprocess.run(
        [sys.executable, "-c", code, *hosts],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env=subprocess_env({"PYTHONHASHSEED": "12345"}),
    ).stdout
    assert out.strip() == str([bucket(h, 7) for h in hosts])


def test_buckets_spread_over_0_to_99() -> None:
    counts = [0] * 100
    for i in range(20_000):
        counts[bucket(f"host-{i}", 3)] += 1
    assert min(counts) > 100 and max(counts) < 300  # expected 200 each


def test_each_version_draws_its_own_buckets() -> None:
    hosts = [f"host-{i}" for i in range(1000)]
    early_v2 = {h for h in hosts if bucket(h, 2) < 10}
    early_v3 = {h for h in hosts if bucket(h, 3) < 10}
    assert early_v2 != early_v3  # the same canary hosts do not take every risk


def test_choose_version_walks_down_to_the_newest_rollout_that_includes_the_host() -> None:
    host = "host-1"
    b = bucket(host, 2)
    assert choose_version(host, [(1, 100), (2, b + 1)]) == 2
    assert choose_version(host, [(1, 100), (2, b)]) == 1
    assert choose_version(host, [(2, b)]) is None
    assert choose_version(host, []) is None
    assert choose_version(host, [(2, 100), (1, 100)]) == 2  # order of the input does not matter
