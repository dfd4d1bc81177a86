"""Atomic, durable small files: the old or the new content, the right mode, no leftovers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from endpoint_agent.errors import StoreError
from endpoint_agent.sync.durable import atomic_write, read_small
from endpoint_agent.sync.state import PolicyStateStore, SyncState


def test_atomic_write_replaces_with_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file"
    atomic_write(path, b"one")
    atomic_write(path, b"two", mode=0o644)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["file"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    atomic_write(path, b"old")
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write(tmp_path / "dir", b"new")  # renaming a file over a directory fails
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_read_small_limits(tmp_path: Path) -> None:
    assert read_small(tmp_path / "absent", 10) is None
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(StoreError, match="larger than 10 bytes"):
        read_small(tmp_path / "big", 10)


def test_sync_state_round_trip_and_corruption(tmp_path: Path) -> None:
    store = PolicyStateStore(tmp_path)
    assert store.load_state() == SyncState()
    state = SyncState(highest_version=4, highest_sha256="ab" * 32, monitor_reason="policy unsafe: x")
    store.save_state(state)
    assert store.load_state() == state
    store.state_path.write_text('{"highest_version": -1}')
    with pytest.raises(StoreError, match="not a valid sync state"):
        store.load_state()
