"""Shared pieces for the sync tests: real Ed25519 keys, real envelopes, a fake server and event sink."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from endpoint_agent.errors import ServerUnavailable
from endpoint_agent.policy import parse_policy
from endpoint_agent.sync.client import PolicyResponse
from endpoint_contract.envelope import sign_policy
from tests.support.doubles import FakeClock

START = datetime(2030, 1, 1, tzinfo=UTC)


def policy_yaml(
    version: int, *, name: str = "ea-blocked", mode: str = "enforce", policy: str = "sync-test"
) -> str:
    return (
        f"name: {policy}\nversion: {version}\nmode: {mode}\nrules:\n"
        f"  - id: block-standin\n    category: p2p\n    action: block\n"
        f'    process:\n      name: ["{name}"]\n'
    )


@dataclass
class Signer:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public(self) -> Any:
        return self.key.public_key()

    def envelope(
        self,
        version: int,
        *,
        fleet_id: str = "default",
        expires_at: datetime | None = None,
        issued_at: datetime | None = None,
        **policy_kwargs: Any,
    ) -> bytes:
        policy = parse_policy(policy_yaml(version, **policy_kwargs), "<test>")
        return sign_policy(
            policy,
            [self.key],
            fleet_id,
            expires_at=expires_at,
            issued_at=issued_at or START - timedelta(days=1),
        )


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


class FakeServer:
    """A ServerClient double: serves `envelope` with an ETag derived from it, or fails on demand."""

    def __init__(self) -> None:
        self.envelope: bytes | None = None
        self.fail: Exception | None = None
        self.requests: list[str | None] = []  # the If-None-Match of each fetch

    @property
    def host_id(self) -> str | None:
        return "host-1"

    def etag(self) -> str | None:
        import hashlib

        return f'"{hashlib.sha256(self.envelope).hexdigest()}"' if self.envelope is not None else None

    def fetch_policy(self, etag: str | None) -> PolicyResponse:
        self.requests.append(etag)
        if self.fail is not None:
            raise self.fail
        if self.envelope is None:
            return PolicyResponse("none")
        if etag == self.etag():
            return PolicyResponse("not_modified", etag=etag)
        return PolicyResponse("ok", body=self.envelope, etag=self.etag())

    def post_json(self, path: str, body: Mapping[str, object]) -> Any:
        raise ServerUnavailable("not used")

    def post_events(self, events: Sequence[str]) -> list[str]:
        raise ServerUnavailable("not used")

    def post_heartbeat(self, heartbeat: Mapping[str, Any]) -> None:
        raise ServerUnavailable("not used")

    def close(self) -> None:
        pass


@dataclass
class ListSink:
    events: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    def record(self, type_: str, detail: Mapping[str, object]) -> None:
        self.events.append((type_, dict(detail)))

    def types(self) -> list[str]:
        return [t for t, _ in self.events]
