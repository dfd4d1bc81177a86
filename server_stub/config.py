"""Server configuration, validated once at start (flags > env > defaults)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from endpoint_agent.errors import SettingsError
from server_stub.export.config import ExportConfig

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "ENDPOINT_SERVER_ADMIN_TOKEN"
READER_TOKEN_ENV = "ENDPOINT_SERVER_READER_TOKEN"
ENROLL_SECRET_ENV = "ENDPOINT_SERVER_ENROLL_SECRET"

MIN_SECRET_LENGTH = 16
MAX_BODY_BYTES = 1024 * 1024
MAX_EVENTS_PER_BATCH = 500
REPORT_DAYS = 30  # the period compliance reports usually cover
DEFAULT_THREADS = 16
# Requests admitted per worker thread: enough to keep every thread busy while others parse, wait
# on the network or are answered from memory; few enough that a refused agent hears it at once
# (503 + Retry-After) instead of waiting in a queue until it times out.
IN_FLIGHT_PER_THREAD = 4


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    public_keys: tuple[Ed25519PublicKey, ...]
    admin_token: str
    enroll_secret: str
    reader_token: str | None = None
    db_url: str | None = None  # None: SQLite under data_dir
    stale_after: float = 300.0
    rate_limit: float = 20.0  # requests per second per credential (or per client address)
    rate_burst: int = 100
    # Enrollments per second (and burst) per enroll credential, summed over every host; half of it
    # per client address (server_stub/limits.py).
    enroll_rate: float = 3000.0
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout: float = 30.0  # seconds to receive a whole request body (408 after)
    max_events: int = MAX_EVENTS_PER_BATCH
    threads: int = DEFAULT_THREADS  # worker threads for blocking (database) routes
    max_in_flight: int | None = None  # requests in progress before 503; None: IN_FLIGHT_PER_THREAD x threads
    write_behind: float = 2.0  # seconds between flushes of last_seen and heartbeats (writebehind.py)
    max_loop_lag: float = 0.02  # event-loop lag past which new connections get 503 (listener.py); 0: off
    export: ExportConfig = field(default_factory=ExportConfig)
    retention_days: float = 0.0  # events detected longer ago are purged; 0 keeps them forever
    clock: Callable[[], datetime] = field(default=utcnow, compare=False)

    def __post_init__(self) -> None:
        if not self.public_keys:
            raise SettingsError("--public-key: at least one trusted policy-signing public key is required")
        secrets = {
            "--admin-token": self.admin_token,
            "--enroll-secret": self.enroll_secret,
            "--reader-token": self.reader_token,
        }
        for flag, value in secrets.items():
            if value is not None and len(value) < MIN_SECRET_LENGTH:
                # Loud, not fatal: a lab or a test may use short secrets; production should not.
                logger.warning(
                    "%s is shorter than %d characters; use a long random secret in production",
                    flag,
                    MIN_SECRET_LENGTH,
                )
        given = [v for v in secrets.values() if v is not None]
        if len(set(given)) != len(given):
            # One secret in two roles would make the role of a request ambiguous.
            raise SettingsError("--admin-token, --reader-token and --enroll-secret must all differ")
        if self.stale_after < 0:
            raise SettingsError("--stale-after: must be >= 0 seconds")
        if self.body_timeout <= 0:
            raise SettingsError("--body-timeout: must be > 0 seconds")
        if self.retention_days < 0:
            raise SettingsError("--retention-days: must be >= 0 (0 keeps events forever)")
        if 0 < self.retention_days < REPORT_DAYS:
            logger.warning(
                "--retention-days %g: the violation list and the %d-day compliance report's drill-downs "
                "will lack older events (the daily counts stay)",
                self.retention_days,
                REPORT_DAYS,
            )
        if self.rate_limit <= 0 or self.rate_burst < 1:
            raise SettingsError("--rate-limit must be > 0 and --rate-burst >= 1")
        if not 0 < self.enroll_rate <= 1_000_000:
            raise SettingsError("--enroll-rate: must be > 0 and at most 1000000 per second")
        if not 1 <= self.threads <= 1024:
            raise SettingsError("--threads: must be between 1 and 1024")
        if not 0 < self.write_behind <= 60:
            raise SettingsError("--write-behind: must be > 0 and <= 60 seconds")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise SettingsError("--max-in-flight: must be >= 1")
        if not 0 <= self.max_loop_lag <= 10:
            raise SettingsError("--max-loop-lag: must be between 0 (off) and 10 seconds")

    @property
    def in_flight_limit(self) -> int:
        return self.max_in_flight if self.max_in_flight is not None else IN_FLIGHT_PER_THREAD * self.threads
