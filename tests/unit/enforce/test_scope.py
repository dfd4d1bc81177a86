"""The test-only enforcement scope: only descendants of one process instance may be signalled."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil
import pytest

from endpoint_agent.enforce.guard import Guard
from endpoint_agent.enforce.scope import ScopedGuard, make_guard
from endpoint_agent.errors import SettingsError
from endpoint_agent.settings import AgentSettings
from tests.support import SpawnFn
from tests.support.enforce_procs import process_info

NOT_US = 9_000_002  # the agent is another process here: the test itself must not be protected as the agent


def test_descendants_of_the_scope_process_are_in_scope(spawn: SpawnFn) -> None:
    child = spawn("ea-scope-child", program="sleep")
    guard = ScopedGuard(os.getpid(), agent_pid=NOT_US)
    assert guard.check(process_info(child.pid)) is None
    assert guard.in_scope(process_info(child.pid))


def test_everything_else_is_protected(spawn: SpawnFn) -> None:
    child = spawn("ea-scope-other", program="sleep")
    guard = ScopedGuard(child.pid, agent_pid=NOT_US)  # scope: descendants of the child (there are none)
    protection = guard.check(process_info(os.getpid()))
    assert protection is not None and "outside the enforcement scope" in str(protection)
    assert (
        guard.check(process_info(child.pid)) is not None
    )  # the scope process itself is not its own descendant


def test_a_reused_pid_is_out_of_scope(spawn: SpawnFn) -> None:
    child = spawn("ea-scope-reused", program="sleep")
    guard = ScopedGuard(os.getpid(), agent_pid=NOT_US)
    info = process_info(child.pid)
    earlier = dataclasses.replace(info, create_time=info.create_time - 60)
    assert guard.check(earlier) is not None  # the record is of another instance than the live one


def test_live_checks_apply_the_scope_too(spawn: SpawnFn) -> None:
    child = spawn("ea-scope-live", program="sleep")
    guard = ScopedGuard(child.pid, agent_pid=NOT_US)
    me = process_info(os.getpid())
    assert guard.check_live(me, psutil.Process(os.getpid())) is not None


def test_settings_choose_the_guard(tmp_path: Path) -> None:
    assert type(make_guard(AgentSettings(state_dir=tmp_path))) is Guard
    scoped = make_guard(AgentSettings(state_dir=tmp_path, enforce_scope_pid=os.getpid()))
    assert isinstance(scoped, ScopedGuard) and scoped.root_pid == os.getpid()
    with pytest.raises(SettingsError, match="enforce_scope_pid"):
        make_guard(AgentSettings(state_dir=tmp_path, enforce_scope_pid=NOT_US))
