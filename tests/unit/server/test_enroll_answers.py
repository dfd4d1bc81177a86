"""The pieces POST /enroll is answered with before the route (server_stub/enrollserve.py):

- the 200's bytes are those FastAPI writes for an EnrollResponse, also for values that need escaping;
- the body is read as the route reads it (json.loads, then EnrollRequest): whatever the quick
  parse accepts, the route accepts with the same values; what it refuses goes to the route;
- a queued enrollment's outcome becomes the application's answer (409, 503 busy, 503 database).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.responses import JSONResponse

from endpoint_agent.errors import StoreError
from server_stub.enrollbatch import EnrollmentsBusy
from server_stub.enrollserve import EnrollDoor, Enrolling, enrolled, parse_enroll_body
from server_stub.models import EnrollRequest, EnrollResponse
from server_stub.store import EnrollRefused

JSON = b"application/json"


@pytest.mark.parametrize(
    ("host_id", "node_key"),
    [
        ("0b9f1c2e-5d2a-4c1b-9b77-2f8f0f3c1a10", "Zx9_-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ab"),
        ('host"with\\quotes', "key\u00e9\U0001f600"),  # never made by the server, still valid JSON
        ("", ""),
    ],
)
def test_the_200_is_what_fastapi_writes(host_id: str, node_key: str) -> None:
    answer = enrolled(host_id, node_key)
    expected = JSONResponse(EnrollResponse(host_id=host_id, node_key=node_key).model_dump())
    assert (answer.status, answer.body, answer.headers) == (200, expected.body, expected.raw_headers)
    assert json.loads(answer.body) == {"host_id": host_id, "node_key": node_key}


def _routes_reading(body: bytes) -> EnrollRequest | None:
    """What FastAPI's route makes of the body: json.loads, then the model."""
    try:
        return EnrollRequest.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        return None


BODIES = [
    b'{"hostname": "ws-1", "machine_id": "m-1"}',
    b' {"hostname": "ws-1", "machine_id": "m-1", "node_key": null} ',
    b'{"hostname": "ws-1", "machine_id": "m-1", "node_key": "k"}',
    b'{"hostname": "a", "machine_id": "m", "hostname": "b"}',  # the last of a repeated key
    b'{"hostname": "\\u00e9\\ud83d\\ude00", "machine_id": "m"}',
    b'{"hostname": "\\ud800", "machine_id": "m"}',  # a lone surrogate
    b'{"hostname": "a\\u0000", "machine_id": "m"}',  # NUL
    b'{"hostname": "a\nb", "machine_id": "m"}',  # a raw control character
    b'{"hostname": "a", "machine_id": "m"} x',
    b'{"hostname": "a", "machine_id": "m",}',
    b'{"hostname": "\xff", "machine_id": "m"}',  # not UTF-8
    b"\xef\xbb\xbf" + b'{"hostname": "a", "machine_id": "m"}',  # a byte order mark
    '{"hostname": "a", "machine_id": "m"}'.encode("utf-16"),
    b'{"hostname": 1, "machine_id": "m"}',
    b'{"hostname": "a", "machine_id": "m", "x": NaN}',
    b'{"hostname": "", "machine_id": "m"}',
    b'{"hostname": "' + b"h" * 257 + b'", "machine_id": "m"}',
    b"[]",
    b"",
]


@pytest.mark.parametrize("body", BODIES)
def test_the_body_is_read_as_the_route_reads_it(body: bytes) -> None:
    quick = parse_enroll_body(JSON, body)
    if quick is not None:  # never accepted here unless the route accepts it, with the same values
        route = _routes_reading(body)
        assert route is not None and route.model_dump() == quick.model_dump()


def test_only_json_is_read_here() -> None:
    body = BODIES[0]
    assert parse_enroll_body(None, body) is not None
    assert parse_enroll_body(b"Application/JSON; charset=utf-8", body) is not None
    assert parse_enroll_body(b"text/plain", body) is None


def _settled(
    outcome: Any, *, error: Exception | None = None
) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    loop = asyncio.new_event_loop()
    try:
        future: asyncio.Future[str | Exception] = loop.create_future()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)
        answer = EnrollDoor.settled(Enrolling(future, "the-key"))
    finally:
        loop.close()
    return answer.status, json.loads(answer.body), dict(answer.headers)


def test_outcomes_become_the_applications_answers() -> None:
    status, body, _ = _settled("h-1")
    assert (status, body) == (200, {"host_id": "h-1", "node_key": "the-key"})
    status, body, _ = _settled(EnrollRefused("m-1"))
    assert status == 409 and "already enrolled" in body["error"]
    status, body, headers = _settled(None, error=EnrollmentsBusy("4096 requests already waiting"))
    assert status == 503 and headers[b"retry-after"] == b"2"
    status, body, headers = _settled(None, error=StoreError("disk full"))
    assert (status, body) == (503, {"error": "database unavailable; retry later"})
    assert headers[b"retry-after"] == b"5"
    status, body, _ = _settled(None, error=RuntimeError("bug"))
    assert (status, body) == (500, {"error": "internal server error"})
