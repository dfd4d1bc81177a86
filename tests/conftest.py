"""Pytest fixtures around tests/support: named processes and sockets that are always reaped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ProcessReaper,
    SocketSpec,
    SpawnedProcess,
    SpawnFn,
    shared_exe_dir,
    spawn_named_process,
)


@pytest.fixture(scope="session")
def exe_dir() -> Iterator[Path]:
    """Named copies of python/sleep, shared by the session (every user may execute them).

    Do not modify these copies; a test that changes a binary makes its own with
    `tests.support.named_executable(name, tmp_path)`.
    """
    path = shared_exe_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reaper() -> Iterator[ProcessReaper]:
    """Kills and waits, at teardown, every process registered with it (even if the test failed)."""
    with ProcessReaper() as r:
        yield r


@pytest.fixture
def spawn(reaper: ProcessReaper, exe_dir: Path) -> SpawnFn:
    """spawn(name, *sockets, program="python", args=(), user=None) -> SpawnedProcess (reaped)."""

    def _spawn(name: str, *sockets: SocketSpec, **kwargs: Any) -> SpawnedProcess:
        kwargs.setdefault("exe_dir", exe_dir)
        return spawn_named_process(name, *sockets, reaper=reaper, **kwargs)

    return _spawn
