"""The signed policy envelope: the one format admin, server and agent exchange.

    envelope = {"payload": base64(payload bytes),
                "signatures": [{"key_id": "<16 hex>", "alg": "ed25519", "sig": base64(64 bytes)}, ...]}
    payload  = canonical JSON (sorted keys, compact, UTF-8) of
               {"schema_version": 1, "fleet_id": str, "issued_at": iso, "expires_at": iso | null,
                "version": int, "policy": <policy model, JSON mode>}

The signature covers the exact payload bytes, so nothing inside the payload is parsed before
a trusted key has vouched for it. Several signatures allow key rotation: any one trusted key
suffices; signatures by keys we do not know are ignored. Fleet, expiry and rollback checks
are the caller's (the agent's) business; `SignedPolicy.is_expired` helps.

The policy inside is validated by the model the caller passes (the agent's `Policy`), so this
module knows the envelope, not the policy language:

    verified = verify_envelope(data, trusted_keys, Policy)   # VerifiedPolicy[Policy]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from endpoint_contract.errors import PolicyLoadError, PolicySignatureError, PolicyValidationError
from endpoint_contract.timestamps import iso_utc

SCHEMA_VERSION = 1
ALG = "ed25519"
PRIVATE_KEY_FILE = "policy-signing.key"
PUBLIC_KEY_FILE = "policy-signing.pub"

# An envelope is a policy plus a few signatures; anything much larger is an attack or a mistake.
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_SIGNATURES = 16
MAX_KEY_FILE_BYTES = 64 * 1024


P = TypeVar("P", bound=BaseModel)


class SignedPolicy(BaseModel, Generic[P]):
    """The payload once its signature has been verified; `P` is the policy model (with a `version`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    fleet_id: str = Field(min_length=1, max_length=200)
    issued_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    version: int = Field(ge=1)
    policy: P

    @model_validator(mode="after")
    def _consistent(self) -> SignedPolicy[P]:
        policy_version = getattr(self.policy, "version", None)
        if self.version != policy_version:
            raise ValueError(f"payload version {self.version} != policy version {policy_version}")
        if self.expires_at is not None and self.expires_at <= self.issued_at:
            raise ValueError("expires_at is not after issued_at")
        return self

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class VerifiedPolicy(Generic[P]):
    """A policy whose payload verified against a trusted key (`key_id` names which one)."""

    signed: SignedPolicy[P]
    key_id: str
    payload: bytes

    @property
    def policy(self) -> P:
        return self.signed.policy

    @property
    def version(self) -> int:
        return self.signed.version

    @property
    def fleet_id(self) -> str:
        return self.signed.fleet_id

    def is_expired(self, now: datetime) -> bool:
        return self.signed.is_expired(now)


# --- keys -------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex chars of sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise PolicyLoadError(f"{path}: {what} file is too large to be a key")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise PolicyLoadError(f"{path}: {what} file not found") from exc
    except IsADirectoryError as exc:
        raise PolicyLoadError(f"{path}: is a directory, expected a {what} file") from exc
    except OSError as exc:
        raise PolicyLoadError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from exc


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    path = Path(path)
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PolicyLoadError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise PolicyLoadError(f"{path}: not an Ed25519 public key")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM (PKCS8) file."""
    path = Path(path)
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # the key is encrypted
        raise PolicyLoadError(f"{path}: private key is encrypted; an unencrypted key is expected") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PolicyLoadError(f"{path}: not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyLoadError(f"{path}: not an Ed25519 private key")
    return key


# --- signing ----------------------------------------------------------------------------------


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no spaces, UTF-8, strict JSON (NaN/Infinity raise ValueError)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def sign_policy(
    policy: BaseModel,
    private_keys: Sequence[Ed25519PrivateKey],
    fleet_id: str,
    *,
    expires_in: timedelta | None = None,
    expires_at: datetime | None = None,
    issued_at: datetime | None = None,
) -> bytes:
    """The envelope (JSON bytes) of `policy`, signed by every key in `private_keys`."""
    if not private_keys:
        raise ValueError("at least one private key is needed to sign")
    if expires_in is not None and expires_at is not None:
        raise ValueError("give expires_in or expires_at, not both")
    issued = issued_at or datetime.now(UTC)
    if expires_in is not None:
        expires_at = issued + expires_in
    payload_obj: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "fleet_id": fleet_id,
        "issued_at": iso_utc(issued),
        "expires_at": iso_utc(expires_at) if expires_at is not None else None,
        "version": getattr(policy, "version", None),
        "policy": policy.model_dump(mode="json"),
    }
    # Refuse to sign what no verifier would accept (e.g. expiry before issue, empty fleet id).
    try:
        SignedPolicy[type(policy)].model_validate(payload_obj)  # type: ignore[misc]
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from exc
    payload = canonical_json(payload_obj)
    signatures = []
    seen: set[str] = set()
    for key in private_keys:
        kid = key_id(key.public_key())
        if kid in seen:
            continue
        seen.add(kid)
        signatures.append({"key_id": kid, "alg": ALG, "sig": _b64(key.sign(payload))})
    return canonical_json({"payload": _b64(payload), "signatures": signatures})


# --- verification -----------------------------------------------------------------------------


def verify_envelope(
    envelope: bytes | str, trusted_public_keys: Iterable[Ed25519PublicKey], policy_model: type[P]
) -> VerifiedPolicy[P]:
    """Verify the signature first, then parse the payload; fails closed.

    Raises PolicySignatureError when the envelope is malformed or no trusted key signed it,
    PolicyValidationError when a trusted key signed a payload that is not a valid policy.
    """
    trusted = {key_id(k): k for k in trusted_public_keys}
    if not trusted:
        raise PolicySignatureError("no trusted public keys configured; refusing every envelope")
    data = envelope.encode("utf-8") if isinstance(envelope, str) else envelope
    if len(data) > MAX_ENVELOPE_BYTES:
        raise PolicySignatureError(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    outer = _parse_outer(data)
    payload = _b64decode(outer["payload"], "payload")
    verified_by = _verify_signatures(payload, outer["signatures"], trusted)
    signed = _parse_payload(payload, policy_model)
    return VerifiedPolicy(signed=signed, key_id=verified_by, payload=payload)


def read_unverified(envelope: bytes | str, policy_model: type[P]) -> SignedPolicy[P]:
    """The payload of an envelope WITHOUT checking any signature.

    Only for report-only paths (`check-policy`, `scan` without `--enforce`) when no trusted key
    was given: nothing is ever signalled on the strength of an unverified envelope.
    """
    data = envelope.encode("utf-8") if isinstance(envelope, str) else envelope
    if len(data) > MAX_ENVELOPE_BYTES:
        raise PolicySignatureError(f"envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    outer = _parse_outer(data)
    return _parse_payload(_b64decode(outer["payload"], "payload"), policy_model)


def _parse_outer(data: bytes) -> dict[str, Any]:
    try:
        outer = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PolicySignatureError("envelope is not JSON") from exc
    if not isinstance(outer, dict):
        raise PolicySignatureError("envelope is not a JSON object")
    if not isinstance(outer.get("payload"), str):
        raise PolicySignatureError("envelope has no payload")
    sigs = outer.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise PolicySignatureError("envelope is not signed (no signatures)")
    if len(sigs) > MAX_SIGNATURES:
        raise PolicySignatureError(f"envelope has more than {MAX_SIGNATURES} signatures")
    return outer


def _verify_signatures(payload: bytes, sigs: list[Any], trusted: dict[str, Ed25519PublicKey]) -> str:
    known = 0
    for entry in sigs:
        if not isinstance(entry, dict):
            raise PolicySignatureError("envelope signature entry is not an object")
        kid, alg, sig = entry.get("key_id"), entry.get("alg"), entry.get("sig")
        if not isinstance(kid, str) or kid not in trusted:
            continue  # a key we do not know (e.g. a newer one during rotation): not a reason to fail
        if alg != ALG:
            continue
        known += 1
        if not isinstance(sig, str):
            continue
        try:
            trusted[kid].verify(_b64decode(sig, "signature"), payload)
        except (InvalidSignature, PolicySignatureError):
            continue
        return kid
    if known == 0:
        raise PolicySignatureError("envelope is not signed by any trusted key")
    raise PolicySignatureError("envelope signature is invalid (tampered or corrupted)")


def _parse_payload(payload: bytes, policy_model: type[P]) -> SignedPolicy[P]:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PolicyValidationError("signed payload is not JSON") from exc
    try:
        return SignedPolicy[policy_model].model_validate(obj)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise PolicyValidationError(f"signed payload is invalid: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise PolicySignatureError(f"envelope {what} is not valid base64") from exc
