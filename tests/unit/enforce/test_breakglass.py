"""The break-glass file counts only when no unprivileged user could have made it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from endpoint_agent.enforce.breakglass import BreakGlass

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file ownership)")


def test_absent_then_present_then_removed(tmp_path: Path) -> None:
    path = tmp_path / "break-glass"
    glass = BreakGlass(path)
    assert not glass.check().active
    path.write_text("incident 4711\n")
    state = glass.check()
    assert state.active and state.note == "present"
    path.unlink()
    assert not glass.check().active


def test_a_file_owned_by_another_user_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "break-glass"
    path.write_text("")
    os.chown(path, 65534, 65534)
    state = BreakGlass(path).check()
    assert not state.active
    assert state.note == "owned by uid 65534, not root"


def test_a_world_writable_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "break-glass"
    path.write_text("")
    path.chmod(0o666)
    assert BreakGlass(path).check().note == "world-writable"


def test_a_symlink_to_a_root_owned_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "break-glass"
    path.symlink_to("/etc/passwd")
    state = BreakGlass(path).check()
    assert not state.active and "symlink" in state.note


def test_a_hard_link_is_ignored(tmp_path: Path) -> None:
    original = tmp_path / "root-file"
    original.write_text("")
    path = tmp_path / "break-glass"
    os.link(original, path)
    assert BreakGlass(path).check().note == "hard-linked"


def test_a_directory_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "break-glass"
    path.mkdir()
    assert not BreakGlass(path).check().active
