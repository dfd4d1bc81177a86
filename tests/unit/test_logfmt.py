"""JSON log lines carry the fields a log pipeline filters on (rule_id, pid, host_id)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from endpoint_agent import logfmt
from endpoint_agent.logfmt import JsonLineFormatter, log_fields, set_log_context


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLineFormatter())
    log = logging.getLogger("test.logfmt")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    saved = dict(logfmt._context)
    logfmt._context.clear()  # what earlier tests' clients set (host_id) must not leak in
    try:
        yield log, out
    finally:
        log.removeHandler(handler)
        logfmt._context.clear()
        logfmt._context.update(saved)


def test_fields_and_context_are_top_level_keys(lines: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = lines
    log.info("before enrollment", extra=log_fields(rule_id="p2p-x", pid=42))
    set_log_context(host_id="h-1")
    log.warning("killed pid %d", 43, extra=log_fields(rule_id="p2p-y", pid=43, action="killed"))
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["rule_id"] == "p2p-x" and first["pid"] == 42 and "host_id" not in first
    assert second == {
        "time": second["time"], "level": "WARNING", "logger": "test.logfmt", "message": "killed pid 43",
        "host_id": "h-1", "rule_id": "p2p-y", "pid": 43, "action": "killed",
    }  # fmt: skip


def test_an_unknown_field_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown log fields"):
        log_fields(msg="clobber")
