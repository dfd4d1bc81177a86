"""The console in a real browser: one seeded server per module, a fresh browser context per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.console import Console, artifacts_dir, browser, seeded_console


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with seeded_console(tmp_path_factory.mktemp("console")) as con:
        yield con


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    return artifacts_dir(request.node.nodeid.split("::", 1)[-1])


@pytest.fixture
def page(chromium: Any, console: Console) -> Iterator[Any]:
    context = chromium.new_context(
        base_url=console.url, viewport={"width": 1400, "height": 1000}, accept_downloads=True
    )
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def sign_in(page: Any, name: str, password: str) -> None:
    page.goto("/signin")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
