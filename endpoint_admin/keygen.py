"""Write a fresh Ed25519 policy-signing key pair to a directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from endpoint_admin.errors import AdminInputError
from endpoint_contract.envelope import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    key_id,
    private_key_pem,
    public_key_pem,
)


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    private_key: Path
    public_key: Path
    key_id: str


def write_keypair(out_dir: str | Path, *, force: bool = False) -> KeyPairFiles:
    """Create `policy-signing.key` (0600) and `policy-signing.pub` in `out_dir`.

    The private key file is created with its final mode by os.open, so it is never
    readable by others, not even for the instant between create and chmod.
    """
    out = Path(out_dir)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AdminInputError(f"{out}: cannot create directory: {exc.strerror or exc}") from exc
    if not out.is_dir():
        raise AdminInputError(f"{out}: not a directory")
    key_path, pub_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    if not force:
        for path in (key_path, pub_path):
            if path.exists():
                raise AdminInputError(f"{path}: already exists (use --force to replace the key pair)")

    private_key = Ed25519PrivateKey.generate()
    public_key = private_key.public_key()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | (0 if force else os.O_EXCL)
    try:
        fd = os.open(key_path, flags, 0o600)
        with os.fdopen(fd, "wb") as fh:
            # O_CREAT honours the umask only on creation; an existing file (force) keeps its mode.
            os.fchmod(fh.fileno(), 0o600)
            fh.write(private_key_pem(private_key))
        pub_path.write_bytes(public_key_pem(public_key))
    except FileExistsError as exc:
        raise AdminInputError(f"{key_path}: already exists (use --force to replace the key pair)") from exc
    except OSError as exc:
        raise AdminInputError(f"{out}: cannot write key pair: {exc.strerror or exc}") from exc
    return KeyPairFiles(private_key=key_path, public_key=pub_path, key_id=key_id(public_key))
