"""Policy sync: fetch -> verify signature -> check fleet/expiry/version -> dry-run safety -> activate.

    sync = PolicySync(client=..., keys=[...], fleet_id="default", store=PolicyStateStore(state_dir),
                      dry_run=DryRun(...), events=StoreEventSink(...), clock=SystemClock())
    sync.load_last_good()     # at start, before the first fetch: a reboot without network still enforces
    sync.poll()               # one conditional GET; raises ServerError/CollectError/StoreError
    sync.current()            # the PolicyProvider: the active policy (monitor-only when unsafe/expired)

Rules, checked in this order on every candidate envelope:
1. the signature over the exact bytes received, by one of the trusted keys, before anything inside
   the payload is parsed (fails closed: no signature, a bad one, an unknown key -> rejected);
2. the fleet id is this agent's; 3. it has not expired;
4. its version is not lower than the highest ever activated (kept durably), and the same version
   must have the same content.
A rejection keeps the last good policy, writes one log line and records a `policy_rejected` agent
event (reason, version, key_id); the same rejected bytes are not reported twice in a row.

Safe activation: a new enforce-mode policy is dry-run against a fresh snapshot first; if it would
stop a protected process or too many processes it is activated in monitor mode only and
reported as `policy_unsafe`. The envelope is persisted (atomic write, fsync) before the
in-memory switch, which is one reference assignment: a scan sees the old or the new policy.
Once the active policy itself expires the agent stops enforcing (monitor mode), keeps
reporting, and records `policy_expired` once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from endpoint_agent.clock import Clock
from endpoint_agent.errors import AgentError, PolicyError, PolicySignatureError, StoreError
from endpoint_agent.policy import ActivePolicy, Policy
from endpoint_agent.sync.client import ServerClient
from endpoint_agent.sync.events import AgentEventSink
from endpoint_agent.sync.safety import SafetyVerdict
from endpoint_agent.sync.state import PolicyStateStore, SyncState
from endpoint_contract.envelope import VerifiedPolicy, verify_envelope
from endpoint_contract.timestamps import iso_utc_or_none

logger = logging.getLogger(__name__)

DEFAULT_FLEET_ID = "default"  # what `endpoint-admin sign/publish` uses without --fleet-id

PollOutcome = Literal["activated", "unchanged", "not_modified", "rejected", "none"]
RejectCode = Literal["signature", "invalid", "fleet", "expired", "rollback", "conflict"]


class SafetyCheck(Protocol):
    def assess(self, compiled: Any) -> SafetyVerdict: ...


class Rejected(Exception):
    """A candidate envelope failed a check (internal: becomes a log line and an agent event)."""

    def __init__(
        self, code: RejectCode, message: str, *, version: int | None = None, key_id: str | None = None
    ):
        super().__init__(message)
        self.code = code
        self.version = version
        self.key_id = key_id


@dataclass(frozen=True)
class _Active:
    verified: VerifiedPolicy[Policy]
    policy: ActivePolicy  # monitor_reason set when the dry-run found it unsafe
    sha256: str  # of the payload
    origin: str

    @property
    def version(self) -> int:
        return self.verified.version


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def claimed_key_ids(envelope: bytes) -> str | None:
    """The key ids an envelope *claims* to be signed by (for the rejection report only; never trusted)."""
    try:
        sigs = json.loads(envelope).get("signatures")
        ids = [s["key_id"] for s in sigs[:16] if isinstance(s, dict) and isinstance(s.get("key_id"), str)]
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError, KeyError):
        return None
    return ",".join(i[:64] for i in ids) or None


class PolicySync:
    def __init__(
        self,
        *,
        client: ServerClient,
        keys: Sequence[Ed25519PublicKey],
        fleet_id: str,
        store: PolicyStateStore,
        dry_run: SafetyCheck,
        events: AgentEventSink,
        clock: Clock,
    ) -> None:
        if not keys:
            raise ValueError("policy sync needs at least one trusted public key")
        self._client = client
        self._keys = tuple(keys)
        self._fleet_id = fleet_id
        self._store = store
        self._dry_run = dry_run
        self._events = events
        self._clock = clock
        self._lock = threading.Lock()  # guards _active, _state and the counters
        # Held while the state file is written: the scan thread (expiry) and the poll thread
        # (activation) both write it, and an older state must never overwrite a newer one.
        self._persist_lock = threading.Lock()
        self._active: _Active | None = None
        self._state = SyncState()
        self._etag: str | None = None
        self._last_rejected: str | None = None  # sha256 of the last rejected bytes
        self.counters = {"polls": 0, "not_modified": 0, "activated": 0, "rejected": 0, "failed": 0}
        self.last_poll_at: datetime | None = None
        self.last_outcome: str | None = None
        self.last_error: str | None = None
        self.last_activation: dict[str, object] | None = None  # version, at, and during which poll

    # -- PolicyProvider ------------------------------------------------------------------------

    def current(self) -> ActivePolicy | None:
        active = self._active  # one read: a concurrent activation swaps the whole record
        if active is None:
            return None
        if active.verified.is_expired(self._clock.now()):
            self._note_expired(active)
            expired_at = iso_utc_or_none(active.verified.signed.expires_at)
            reason = f"policy version {active.version} expired at {expired_at}"
            return replace(active.policy, monitor_reason=reason)
        return active.policy

    # -- start ---------------------------------------------------------------------------------

    def load_last_good(self) -> ActivePolicy | None:
        """Activate the persisted envelope, verified again, before anything is fetched."""
        try:
            state = self._store.load_state()
        except StoreError as exc:
            # The rollback floor is lost; the last good envelope (if valid) becomes the new floor.
            logger.error("%s; starting from the last good policy's version", exc)
            state = SyncState()
        with self._lock:
            self._state = state
        try:
            body = self._store.load_envelope()
        except StoreError as exc:
            logger.error("cannot load the last good policy: %s", exc)
            return None
        if body is None:
            logger.info("no last good policy in %s; waiting for the server", self._store.directory)
            return None
        origin = f"last good policy {self._store.envelope_path}"
        try:
            # An expired last good policy still loads: it reports (monitor mode) until a fresh one arrives.
            self._consider(body, origin=origin, persist_envelope=False, allow_expired=True)
        except Rejected as exc:
            self._reject(exc, body, origin)
            return None
        except AgentError as exc:  # a dry-run or a state write failed: the server will send it again
            logger.error("cannot activate the last good policy: %s", exc)
            return None
        return self.current()

    # -- polling -------------------------------------------------------------------------------

    def poll(self) -> PollOutcome:
        """One conditional fetch. Server and disk failures raise (the schedule backs off)."""
        with self._lock:
            self.counters["polls"] += 1
            self.last_poll_at = self._clock.now()
        try:
            outcome = self._poll()
        except Exception as exc:
            with self._lock:
                self.counters["failed"] += 1
                self.last_outcome, self.last_error = "failed", str(exc)
            raise
        with self._lock:
            self.last_outcome, self.last_error = outcome, None
        return outcome

    def _poll(self) -> PollOutcome:
        fetched = self._client.fetch_policy(self._etag)
        if fetched.status == "not_modified":
            with self._lock:
                self.counters["not_modified"] += 1
            return "not_modified"
        if fetched.status == "none":
            self._etag = None
            if self._active is None:
                logger.info("the server has no policy for this host yet")
            return "none"
        body = fetched.body or b""
        origin = f"server (served version {fetched.served_version})"
        outcome: PollOutcome
        try:
            outcome = self._consider(body, origin=origin, persist_envelope=True)
        except Rejected as exc:
            self._reject(exc, body, origin)
            outcome = "rejected"
        # Remembered only now: a failure above (disk, snapshot) refetches the same bytes next time.
        self._etag = fetched.etag
        return outcome

    def _consider(
        self, body: bytes, *, origin: str, persist_envelope: bool, allow_expired: bool = False
    ) -> Literal["activated", "unchanged"]:
        """Check a candidate; activate it or raise Rejected. StoreError/CollectError pass through."""
        try:
            verified = verify_envelope(body, self._keys, Policy)
        except PolicySignatureError as exc:
            raise Rejected("signature", str(exc), key_id=claimed_key_ids(body)) from exc
        except PolicyError as exc:
            raise Rejected("invalid", str(exc), key_id=claimed_key_ids(body)) from exc
        sha = _sha256(verified.payload)
        active = self._active
        if active is not None and active.sha256 == sha:
            return "unchanged"  # accepted before; a 200 after a restart or a lost ETag
        version, kid = verified.version, verified.key_id
        if verified.fleet_id != self._fleet_id:
            raise Rejected(
                "fleet",
                f"policy version {version} is for fleet {verified.fleet_id!r}, this agent is in fleet "
                f"{self._fleet_id!r}",
                version=version,
                key_id=kid,
            )
        expires_at = verified.signed.expires_at
        if verified.is_expired(self._clock.now()) and not allow_expired:
            raise Rejected(
                "expired",
                f"policy version {version} expired at {iso_utc_or_none(expires_at)}",
                version=version,
                key_id=kid,
            )
        state = self._state
        if version < state.highest_version:
            raise Rejected(
                "rollback",
                f"policy version {version} is older than version {state.highest_version}, the highest ever "
                "activated here",
                version=version,
                key_id=kid,
            )
        same_as_before = version == state.highest_version and state.highest_sha256 is not None
        if same_as_before and sha != state.highest_sha256:
            raise Rejected(
                "conflict",
                f"policy version {version} differs from the version {version} activated before "
                "(a version number must never be reused)",
                version=version,
                key_id=kid,
            )
        try:
            compiled = ActivePolicy.from_policy(verified.policy, f"{origin}, key {kid}")
        except PolicyError as exc:
            raise Rejected(
                "invalid", f"policy version {version} does not compile: {exc}", version=version, key_id=kid
            ) from exc
        if same_as_before:
            monitor_reason = state.monitor_reason  # the same bytes were judged when first activated
            verdict = None
        else:
            verdict = self._assess(compiled)
            monitor_reason = None if verdict is None or verdict.safe else f"policy unsafe: {verdict.reason}"
        if monitor_reason is not None:
            compiled = replace(compiled, monitor_reason=monitor_reason)
        self._commit(
            _Active(verified, compiled, sha, origin), body if persist_envelope else None, monitor_reason
        )
        if verdict is not None and not verdict.safe:
            logger.error(
                "policy %s version %d is UNSAFE: %s; it is active in monitor mode only",
                compiled.name,
                version,
                verdict.reason,
            )
            self._events.record(
                "policy_unsafe",
                {"version": version, "key_id": kid, "policy_name": compiled.name, **verdict.to_json()},
            )
        return "activated"

    def _assess(self, compiled: ActivePolicy) -> SafetyVerdict | None:
        """The dry-run verdict; None for a monitor-mode policy (it stops nothing)."""
        if compiled.mode != "enforce":
            return None
        return self._dry_run.assess(compiled.compiled)

    def _commit(self, new: _Active, envelope: bytes | None, monitor_reason: str | None) -> None:
        """Persist (envelope first, then the state), then switch in memory."""
        if envelope is not None:
            self._store.save_envelope(envelope)
        with self._persist_lock:
            with self._lock:
                state = self._state
            if new.version > state.highest_version or state.highest_sha256 != new.sha256:
                state = SyncState(
                    highest_version=new.version,
                    highest_sha256=new.sha256,
                    monitor_reason=monitor_reason,
                    expired_reported=None,
                )
                self._store.save_state(state)
            with self._lock:
                previous = self._active
                self._state = state
                self._active = new
                self.counters["activated"] += 1
                self.last_activation = {
                    "version": new.version,
                    "at": iso_utc_or_none(self._clock.now()),
                    "poll": self.counters["polls"],  # 0: loaded at start, before any poll
                }
        mode = f"monitor only ({monitor_reason})" if monitor_reason else new.policy.mode
        logger.info(
            "policy activated: %s version %d, mode %s, signed by key %s, from %s%s",
            new.policy.name,
            new.version,
            mode,
            new.verified.key_id,
            new.origin,
            f" (was version {previous.version})" if previous else "",
        )

    def _reject(self, exc: Rejected, body: bytes, origin: str) -> None:
        with self._lock:
            self.counters["rejected"] += 1
        keeping = self._active
        kept = f"keeping version {keeping.version}" if keeping else "no policy is active"
        sha = _sha256(body)
        if sha == self._last_rejected:
            logger.debug("the same rejected policy again (%s); %s", exc, kept)
            return
        self._last_rejected = sha
        logger.error("policy rejected from %s: %s; %s", origin, exc, kept)
        self._events.record(
            "policy_rejected",
            {
                "reason": str(exc),
                "code": exc.code,
                "version": exc.version,
                "key_id": exc.key_id,
                "source": origin,
                "active_version": keeping.version if keeping else None,
            },
        )

    def _note_expired(self, active: _Active) -> None:
        with self._lock:
            if self._state.expired_reported == active.version or self._active is not active:
                return
            self._state = self._state.model_copy(update={"expired_reported": active.version})
        expires_at = iso_utc_or_none(active.verified.signed.expires_at)
        logger.error(
            "the active policy %s version %d expired at %s: enforcement stops (monitor mode) until a newer "
            "policy arrives",
            active.policy.name,
            active.version,
            expires_at,
        )
        self._events.record(
            "policy_expired",
            {"version": active.version, "key_id": active.verified.key_id, "expires_at": expires_at},
        )
        try:
            with self._persist_lock:
                with self._lock:
                    state = self._state  # the newest: an activation may have happened meanwhile
                self._store.save_state(state)
        except StoreError as exc:
            logger.error("cannot persist that the expiry was reported: %s", exc)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        active = self._active
        with self._lock:
            counters = dict(self.counters)
            state = self._state
            last = {
                "last_poll_at": iso_utc_or_none(self.last_poll_at),
                "last_outcome": self.last_outcome,
                "last_error": self.last_error,
                "last_activation": self.last_activation,
            }
        now = self._clock.now()
        return {
            "host_id": self._client.host_id,
            "fleet_id": self._fleet_id,
            "etag": self._etag,
            **last,
            **counters,
            "highest_version": state.highest_version,
            "active": None
            if active is None
            else {
                "version": active.version,
                "name": active.policy.name,
                "key_id": active.verified.key_id,
                "origin": active.origin,
                "issued_at": iso_utc_or_none(active.verified.signed.issued_at),
                "expires_at": iso_utc_or_none(active.verified.signed.expires_at),
                "expired": active.verified.is_expired(now),
                "monitor_reason": active.policy.monitor_reason,
            },
        }


__all__ = ["DEFAULT_FLEET_ID", "PolicySync", "PollOutcome", "SafetyCheck", "claimed_key_ids"]
