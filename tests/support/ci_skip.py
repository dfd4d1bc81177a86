"""Skips for the tests that need root, namespaces and Debian packages -- except in CI, where they must run."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(reason: str | None) -> None:
    """Skip with `reason` (None: nothing missing); in CI (CI=true) fail instead."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)
