"""Bad policy envelopes, and a way to make the real server serve them.

The server refuses most of these on `PUT /policy` (bad signature, unknown key, expired, a version
that is not higher), which is right -- but an agent must also refuse them when a compromised
server, or an attacker in the middle, serves them anyway. `serve_raw()` therefore writes the
envelope straight into the server's database through its own store API (`PolicyRepo.publish`
checks only that the row's version increases), as the newest version at 100% rollout: the next
`GET /policy` returns those exact bytes with a fresh ETag.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from endpoint_agent.policy import parse_policy
from endpoint_contract.envelope import load_private_key, sign_policy
from tests.support.envelopes import flip_payload_byte, strip_signatures


def sign(
    policy_yaml: str,
    private_key: Path | Ed25519PrivateKey,
    *,
    fleet_id: str = "default",
    expires_at: datetime | None = None,
    issued_at: datetime | None = None,
) -> bytes:
    key = load_private_key(private_key) if isinstance(private_key, Path) else private_key
    policy = parse_policy(policy_yaml, "<test policy>")
    return sign_policy(policy, [key], fleet_id, expires_at=expires_at, issued_at=issued_at)


def expired(policy_yaml: str, private_key: Path) -> bytes:
    now = datetime.now(UTC)
    return sign(
        policy_yaml, private_key, issued_at=now - timedelta(days=2), expires_at=now - timedelta(days=1)
    )


def unknown_key(policy_yaml: str) -> bytes:
    return sign(policy_yaml, Ed25519PrivateKey.generate())


def serve_raw(data_dir: Path, envelope: bytes, *, db_url: str | None = None) -> int:
    """Make the server (SQLite in `data_dir`, or `db_url`) serve `envelope` next; returns its row version."""
    from server_stub.store import NewPolicy, Store, sqlite_url

    store = Store.open(db_url or sqlite_url(data_dir))
    try:
        versions = [v.version for v in store.policies.versions()]
        row_version = max(versions, default=0) + 1
        store.policies.publish(
            NewPolicy(
                version=row_version,
                envelope=envelope.decode("utf-8"),
                etag='"' + hashlib.sha256(envelope).hexdigest() + '"',
                key_id="injected",
                policy_name="injected-by-test",
                fleet_id="injected",
                rollout_percent=100,
            ),
            datetime.now(UTC),
        )
    finally:
        store.close()
    return row_version


__all__ = ["expired", "flip_payload_byte", "serve_raw", "sign", "strip_signatures", "unknown_key"]
