"""The signed envelope: tampering, missing or unknown signatures, rotation, expiry, key files."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from endpoint_admin.keygen import write_keypair
from endpoint_agent.errors import PolicyLoadError, PolicySignatureError, PolicyValidationError
from endpoint_agent.policy import Policy, parse_policy
from endpoint_contract.envelope import (
    canonical_json,
    key_id,
    load_private_key,
    load_public_key,
    sign_policy,
    verify_envelope,
)

POLICY = """
name: corporate-baseline
version: 3
mode: enforce
rules:
  - id: p2p-qbittorrent
    category: p2p
    action: block
    process:
      name: ["qbittorrent*"]
"""
ISSUED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY, "test.yaml")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _outer(envelope: bytes) -> dict:
    return json.loads(envelope)


def _payload(envelope: bytes) -> dict:
    return json.loads(base64.b64decode(_outer(envelope)["payload"]))


def test_round_trip_keeps_policy_and_metadata(policy: Policy, key: Ed25519PrivateKey) -> None:
    env = sign_policy(policy, [key], "fleet-a", expires_in=timedelta(days=30), issued_at=ISSUED)
    verified = verify_envelope(env, [key.public_key()], Policy)
    assert verified.policy == policy
    assert verified.version == 3
    assert verified.fleet_id == "fleet-a"
    assert verified.key_id == key_id(key.public_key())
    assert verified.signed.issued_at == ISSUED
    assert verified.signed.expires_at == ISSUED + timedelta(days=30)


def test_payload_is_canonical_json_with_the_agreed_keys(policy: Policy, key: Ed25519PrivateKey) -> None:
    env = sign_policy(policy, [key], "fleet-a", issued_at=ISSUED)
    raw = base64.b64decode(_outer(env)["payload"])
    obj = json.loads(raw)
    assert raw == canonical_json(obj)
    assert set(obj) == {"schema_version", "fleet_id", "issued_at", "expires_at", "version", "policy"}
    assert obj["schema_version"] == 1
    assert obj["issued_at"] == "2030-01-02T03:04:05Z"
    assert obj["expires_at"] is None
    assert obj["policy"] == policy.model_dump(mode="json")
    sig = _outer(env)["signatures"][0]
    assert sig["alg"] == "ed25519"
    assert sig["key_id"] == key_id(key.public_key()) and len(sig["key_id"]) == 16


def test_every_tampered_payload_byte_is_rejected(policy: Policy, key: Ed25519PrivateKey) -> None:
    env = sign_policy(policy, [key], "fleet-a", issued_at=ISSUED)
    raw = bytearray(base64.b64decode(_outer(env)["payload"]))
    for index in range(0, len(raw), max(1, len(raw) // 40)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        outer = _outer(env)
        outer["payload"] = base64.b64encode(bytes(tampered)).decode()
        with pytest.raises(PolicySignatureError, match="invalid"):
            verify_envelope(json.dumps(outer).encode(), [key.public_key()], Policy)


def test_tampered_signature_is_rejected(policy: Policy, key: Ed25519PrivateKey) -> None:
    outer = _outer(sign_policy(policy, [key], "fleet-a"))
    sig = bytearray(base64.b64decode(outer["signatures"][0]["sig"]))
    sig[0] ^= 0xFF
    outer["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(PolicySignatureError):
        verify_envelope(json.dumps(outer), [key.public_key()], Policy)


@pytest.mark.parametrize("signatures", [None, [], "nope", [{}], [{"key_id": 5}]])
def test_missing_or_malformed_signatures_fail_closed(
    policy: Policy, key: Ed25519PrivateKey, signatures
) -> None:
    outer = _outer(sign_policy(policy, [key], "fleet-a"))
    if signatures is None:
        del outer["signatures"]
    else:
        outer["signatures"] = signatures
    with pytest.raises(PolicySignatureError):
        verify_envelope(json.dumps(outer), [key.public_key()], Policy)


def test_signature_by_unknown_key_is_rejected(policy: Policy, key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    env = sign_policy(policy, [other], "fleet-a")
    with pytest.raises(PolicySignatureError, match="not signed by any trusted key"):
        verify_envelope(env, [key.public_key()], Policy)


def test_forged_signature_under_a_trusted_key_id_is_rejected(policy: Policy, key: Ed25519PrivateKey) -> None:
    # An attacker signs with their own key but claims the trusted key's id.
    attacker = Ed25519PrivateKey.generate()
    outer = _outer(sign_policy(policy, [attacker], "fleet-a"))
    outer["signatures"][0]["key_id"] = key_id(key.public_key())
    with pytest.raises(PolicySignatureError, match="invalid"):
        verify_envelope(json.dumps(outer), [key.public_key()], Policy)


def test_rotation_any_trusted_key_suffices_and_unknown_ones_are_ignored(policy: Policy) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    both = sign_policy(policy, [old, new], "fleet-a")
    assert len(_outer(both)["signatures"]) == 2
    # Agents that trust only the old key, only the new one, or both, all accept it.
    for trusted in ([old.public_key()], [new.public_key()], [old.public_key(), new.public_key()]):
        assert verify_envelope(both, trusted, Policy).version == 3
    # After rotation, an envelope signed by the new key only is accepted by agents trusting both.
    only_new = sign_policy(policy, [new], "fleet-a")
    assert verify_envelope(only_new, [old.public_key(), new.public_key()], Policy).key_id == key_id(
        new.public_key()
    )
    with pytest.raises(PolicySignatureError):
        verify_envelope(only_new, [old.public_key()], Policy)


def test_no_trusted_keys_refuses_everything(policy: Policy, key: Ed25519PrivateKey) -> None:
    with pytest.raises(PolicySignatureError, match="no trusted public keys"):
        verify_envelope(sign_policy(policy, [key], "f"), [], Policy)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"payload": 1, "signatures": []}', b'{"payload": "!!!", "signatures": [{}]}'],
)
def test_garbage_envelopes_fail_closed(data: bytes, key: Ed25519PrivateKey) -> None:
    with pytest.raises(PolicySignatureError):
        verify_envelope(data, [key.public_key()], Policy)


def test_signed_but_invalid_payload_is_a_validation_error(policy: Policy, key: Ed25519PrivateKey) -> None:
    # A trusted key signed a payload whose version disagrees with its policy: refuse it.
    payload = _payload(sign_policy(policy, [key], "fleet-a"))
    payload["version"] = 4
    raw = canonical_json(payload)
    env = {
        "payload": base64.b64encode(raw).decode(),
        "signatures": [
            {
                "key_id": key_id(key.public_key()),
                "alg": "ed25519",
                "sig": base64.b64encode(key.sign(raw)).decode(),
            }
        ],
    }
    with pytest.raises(PolicyValidationError, match="version"):
        verify_envelope(json.dumps(env), [key.public_key()], Policy)


def test_expiry_helper(policy: Policy, key: Ed25519PrivateKey) -> None:
    env = sign_policy(policy, [key], "f", expires_in=timedelta(hours=1), issued_at=ISSUED)
    verified = verify_envelope(env, [key.public_key()], Policy)
    assert not verified.is_expired(ISSUED + timedelta(minutes=59))
    assert verified.is_expired(ISSUED + timedelta(hours=1))
    never = verify_envelope(sign_policy(policy, [key], "f", issued_at=ISSUED), [key.public_key()], Policy)
    assert not never.is_expired(ISSUED + timedelta(days=36500))


def test_sign_refuses_what_no_verifier_would_accept(policy: Policy, key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError):
        sign_policy(policy, [], "f")
    with pytest.raises(ValueError):
        sign_policy(policy, [key], "")
    with pytest.raises(ValueError):
        sign_policy(policy, [key], "f", expires_at=ISSUED - timedelta(seconds=1), issued_at=ISSUED)
    with pytest.raises(ValueError):
        sign_policy(policy, [key], "f", issued_at=datetime(2030, 1, 1))  # naive


def test_keygen_writes_0600_private_key_and_loadable_pair(tmp_path: Path, policy: Policy) -> None:
    old_umask = os.umask(0)  # even with a permissive umask the key must not be readable by others
    try:
        pair = write_keypair(tmp_path / "keys")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert pair.private_key.name == "policy-signing.key" and pair.public_key.name == "policy-signing.pub"
    assert pair.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    priv, pub = load_private_key(pair.private_key), load_public_key(pair.public_key)
    assert key_id(pub) == pair.key_id
    assert verify_envelope(sign_policy(policy, [priv], "f"), [pub], Policy).key_id == pair.key_id


def test_key_loading_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    pair = write_keypair(tmp_path)
    cases = {
        tmp_path / "missing.pem": "not found",
        tmp_path: "is a directory",
    }
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    cases[garbage] = "not a PEM"
    for path, message in cases.items():
        for loader in (load_public_key, load_private_key):
            with pytest.raises(PolicyLoadError, match=message) as info:
                loader(path)
            assert str(path) in str(info.value) and "\n" not in str(info.value)
    # A private key where a public one is expected, and the other way round.
    with pytest.raises(PolicyLoadError, match="public key"):
        load_public_key(pair.private_key)
    with pytest.raises(PolicyLoadError, match="private key"):
        load_private_key(pair.public_key)
