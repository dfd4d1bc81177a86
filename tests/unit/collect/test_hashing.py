"""HashCache on real files: digests, versioning by stat identity, cap, LRU, pruning."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest

from endpoint_agent.collect.hashing import HashCache, HashResult


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "tool"
    shutil.copyfile(shutil.which("sleep") or "/bin/sleep", path)
    return path


def test_digest_is_sha256_of_the_file(binary: Path) -> None:
    result = HashCache().hash_path(str(binary))
    assert result == HashResult(_sha(binary))


def test_digest_of_a_file_larger_than_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    assert HashCache().hash_path(str(path)).sha256 == _sha(path)


def test_same_version_is_read_once(binary: Path) -> None:
    cache = HashCache()
    first = cache.hash_path(str(binary))
    second = cache.hash_path(str(binary))
    assert first == second
    assert cache.stats.files_hashed == 1
    assert cache.stats.hits == 1


def test_changed_mtime_is_read_again(binary: Path) -> None:
    cache = HashCache()
    before = cache.hash_path(str(binary)).sha256
    st = binary.stat()
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    assert cache.hash_path(str(binary)).sha256 == before
    assert cache.stats.files_hashed == 2


def test_changed_content_and_size_gives_the_new_digest(binary: Path) -> None:
    cache = HashCache()
    before = cache.hash_path(str(binary)).sha256
    st = binary.stat()
    with binary.open("ab") as f:
        f.write(b"\0")
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: size and ctime still differ
    after = cache.hash_path(str(binary)).sha256
    assert after == _sha(binary)
    assert after != before
    assert cache.stats.files_hashed == 2


def test_file_above_the_cap_is_not_hashed(binary: Path) -> None:
    cache = HashCache(max_bytes=binary.stat().st_size - 1)
    result = cache.hash_path(str(binary))
    assert result.sha256 is None
    assert result.too_large
    assert cache.stats.files_hashed == 0
    assert HashCache(max_bytes=binary.stat().st_size).hash_path(str(binary)).sha256 == _sha(binary)


def test_missing_file_gives_an_error_not_an_exception(tmp_path: Path) -> None:
    result = HashCache().hash_path(str(tmp_path / "nope"))
    assert result.sha256 is None
    assert result.error
    assert not result.too_large


def test_path_with_nul_byte_gives_an_error_not_an_exception() -> None:
    assert HashCache().hash_path("/bin/\0sleep").sha256 is None


def test_directory_is_refused(tmp_path: Path) -> None:
    assert HashCache().hash_path(str(tmp_path)).error == "not a regular file"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    results: list[HashResult] = []
    worker = threading.Thread(target=lambda: results.append(HashCache().hash_path(str(fifo))), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the thread before failing: open the write end
        with open(fifo, "wb"):
            pass
        pytest.fail("hashing a FIFO blocked")
    assert results[0].error == "not a regular file"


def test_lru_keeps_at_most_max_entries(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]) * 10)
        paths.append(path)
    cache = HashCache(max_entries=2)
    for path in paths:
        cache.hash_path(str(path))
    assert len(cache) == 2
    cache.hash_path(str(paths[2]))  # most recent: still cached
    assert cache.stats.files_hashed == 3
    cache.hash_path(str(paths[0]))  # the oldest was evicted
    assert cache.stats.files_hashed == 4


def test_end_scan_prunes_only_vanished_or_changed_files(tmp_path: Path) -> None:
    kept, deleted, changed = (tmp_path / n for n in ("kept", "deleted", "changed"))
    for path in (kept, deleted, changed):
        path.write_bytes(path.name.encode())
    cache = HashCache(prune_every=1)
    for path in (kept, deleted, changed):
        cache.hash_path(str(path))
    cache.end_scan()  # all used in this scan: nothing pruned
    assert len(cache) == 3
    deleted.unlink()
    changed.write_bytes(b"other content")
    cache.end_scan()  # nothing used since: the files are checked
    assert len(cache) == 1
    assert cache.stats.pruned == 2
    cache.hash_path(str(kept))
    assert cache.stats.files_hashed == 3  # the kept entry still served the digest


def test_pruning_runs_every_nth_scan(tmp_path: Path) -> None:
    path = tmp_path / "gone"
    path.write_bytes(b"x")
    cache = HashCache(prune_every=3)
    cache.hash_path(str(path))
    path.unlink()
    for _ in range(3):
        cache.end_scan()
    assert len(cache) == 1  # pruned on the 3rd scan, but it was used in that period
    cache.end_scan()
    cache.end_scan()
    assert len(cache) == 1  # not a pruning scan
    cache.end_scan()
    assert len(cache) == 0


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        HashCache(max_entries=0)
    with pytest.raises(ValueError):
        HashCache(max_bytes=-1)
    with pytest.raises(ValueError):
        HashCache(prune_every=0)
