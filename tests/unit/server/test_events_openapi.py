"""POST /events reads its body itself (decoded once, server_stub/batch.py); the OpenAPI
document still gives the body's schema (EventBatch, inlined), so clients and generated tests see it."""

from __future__ import annotations

from pathlib import Path

from endpoint_contract.envelope import load_public_key
from server_stub.app import create_app
from server_stub.config import ServerConfig
from tests.support.server import make_keys


def test_the_events_body_is_documented_as_an_event_batch(tmp_path: Path) -> None:
    _, public = make_keys(tmp_path / "keys")
    config = ServerConfig(
        data_dir=tmp_path,
        public_keys=(load_public_key(public),),
        admin_token="a" * 32,
        enroll_secret="e" * 32,
    )
    app = create_app(config)
    try:
        op = app.openapi()["paths"]["/api/v1/events"]["post"]
    finally:
        app.state.ctx.store.close()
    body = op["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["events"] and schema["additionalProperties"] is False
    kinds = {s["properties"]["kind"]["const"] for s in schema["properties"]["events"]["items"]["oneOf"]}
    assert kinds == {"violation", "agent"}
    assert "$ref" not in str(schema)  # self-contained: nothing points at components that are not there
    assert {"413", "422"} <= set(op["responses"])
