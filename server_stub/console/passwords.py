"""Password hashes (argon2id, memory-hard) and the delay that follows failed sign-ins (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's defaults follow RFC 9106's second recommendation (64 MiB, 3 passes, 4 lanes).
_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 10
# Failures allowed before the account waits; then 30 s, 1 min, 2 min, ... at most 15 minutes.
FREE_FAILURES = 5
FIRST_DELAY = timedelta(seconds=30)
MAX_DELAY = timedelta(minutes=15)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# Verified against when the user name is unknown, so that answer takes as long as a wrong password.
_DUMMY_HASH = hash_password("not a password of anyone")


def burn_time(password: str) -> None:
    verify_password(_DUMMY_HASH, password)


def check_new_password(password: str) -> str | None:
    """Why this password cannot be used, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "a password may have at most 1024 characters"
    return None


def lockout_until(failures: int, now: datetime) -> datetime | None:
    """When an account may try again after `failures` consecutive failures (None: at once)."""
    if failures < FREE_FAILURES:
        return None
    delay = FIRST_DELAY * 2 ** min(failures - FREE_FAILURES, 10)
    return now + min(delay, MAX_DELAY)
