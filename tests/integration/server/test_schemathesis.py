"""schemathesis against the real server's OpenAPI document: generated requests, zero 5xx.

Every operation gets bounded generated cases (valid and invalid bodies, queries and paths) with
the admin token, so that each reaches its handler; the document itself must name every error
status the server answers with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.server import LiveServer, run_server

DOCUMENTED = {400, 401, 403, 404, 409, 413, 422, 429, 503}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir: Path = tmp_path_factory.mktemp("schemathesis")
    # Generous limits: the point is what each handler does with strange input, not the limiter.
    with run_server(workdir, extra_args=["--rate-limit", "10000", "--rate-burst", "100000"]) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")


def test_every_error_status_is_documented(api_schema: Any) -> None:
    codes: set[int] = set()
    for _path, operations in api_schema.raw_schema["paths"].items():
        for op in operations.values():
            codes |= {int(c) for c in op.get("responses", {}) if c.isdigit()}
    assert codes >= DOCUMENTED, DOCUMENTED - codes


def test_no_generated_request_is_a_server_error(api_schema: Any, fuzz_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {fuzz_server.admin_token}"}
    failures: list[tuple[str, str, int, str]] = []
    statuses: set[int] = set()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 10

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def call(case: Any) -> None:
            response = case.call(base_url=fuzz_server.base_url, headers=headers)
            statuses.add(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.path, response.status_code, response.text[:200]))

        call()
    assert failures == []
    assert {200, 422} <= statuses, statuses  # handlers were reached, and refused what they should
