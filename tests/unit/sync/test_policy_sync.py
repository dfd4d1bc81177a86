"""PolicySync with real keys, envelopes and state directory; the server and the clock are doubles."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from endpoint_agent.errors import CollectError, ServerUnavailable
from endpoint_agent.sync.policy_sync import PolicySync
from endpoint_agent.sync.safety import SafetyVerdict
from endpoint_agent.sync.state import PolicyStateStore
from endpoint_contract.envelope import key_id
from tests.support.doubles import FakeClock
from tests.support.envelopes import flip_payload_byte, strip_signatures
from tests.unit.sync.conftest import START, FakeServer, ListSink, Signer


@dataclass
class StubDryRun:
    verdict: SafetyVerdict = field(default_factory=lambda: SafetyVerdict(True, "it would stop 1 of 50"))
    calls: int = 0
    error: Exception | None = None

    def assess(self, compiled: Any) -> SafetyVerdict:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.verdict


@dataclass
class Rig:
    tmp: Path
    signer: Signer
    clock: FakeClock
    server: FakeServer = field(default_factory=FakeServer)
    events: ListSink = field(default_factory=ListSink)
    dry_run: StubDryRun = field(default_factory=StubDryRun)
    fleet_id: str = "default"
    extra_keys: tuple[Any, ...] = ()

    def sync(self) -> PolicySync:
        return PolicySync(
            client=self.server,
            keys=[self.signer.public, *self.extra_keys],
            fleet_id=self.fleet_id,
            store=PolicyStateStore(self.tmp / "state"),
            dry_run=self.dry_run,
            events=self.events,
            clock=self.clock,
        )

    def rejected(self) -> list[dict[str, object]]:
        return [d for t, d in self.events.events if t == "policy_rejected"]


@pytest.fixture
def rig(tmp_path: Path, signer: Signer, clock: FakeClock) -> Rig:
    return Rig(tmp_path, signer, clock)


def active_version(sync: PolicySync) -> int | None:
    current = sync.current()
    return current.version if current else None


def test_activates_a_signed_policy_then_answers_304_without_refetching(rig: Rig) -> None:
    sync = rig.sync()
    assert sync.current() is None
    rig.server.envelope = rig.signer.envelope(1)
    assert sync.poll() == "activated"
    current = sync.current()
    assert current is not None and current.version == 1 and current.mode == "enforce"
    assert current.monitor_reason is None
    assert sync.poll() == "not_modified"
    assert rig.server.requests == [None, rig.server.etag()]  # If-None-Match sent back
    assert sync.status()["not_modified"] == 1 and sync.status()["activated"] == 1
    assert rig.events.events == []


def test_a_newer_version_replaces_the_active_one(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1)
    sync.poll()
    rig.server.envelope = rig.signer.envelope(2, name="other")
    assert sync.poll() == "activated"
    assert active_version(sync) == 2


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda s: flip_payload_byte(s.envelope(2)), "signature", "signature is invalid"),
        (lambda s: strip_signatures(s.envelope(2)), "signature", "not signed"),
        (lambda s: Signer().envelope(2), "signature", "not signed by any trusted key"),
        (lambda s: s.envelope(2, fleet_id="staging"), "fleet", "is for fleet 'staging'"),
        (lambda s: s.envelope(2, expires_at=START - timedelta(seconds=1)), "expired", "expired at"),
        (lambda s: s.envelope(1, name="replayed-but-different"), "conflict", "differs from the version 1"),
        (lambda s: b"{not json", "signature", "not JSON"),
    ],
    ids=[
        "flipped-byte",
        "stripped-signature",
        "unknown-key",
        "foreign-fleet",
        "expired",
        "same-version",
        "junk",
    ],
)
def test_bad_envelopes_are_rejected_and_the_last_good_one_stays(
    rig: Rig, make: Any, code: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1)
    sync.poll()
    rig.server.envelope = make(rig.signer)
    assert sync.poll() == "rejected"
    assert active_version(sync) == 1
    [detail] = rig.rejected()
    assert detail["code"] == code and message in str(detail["reason"]), detail
    assert detail["active_version"] == 1
    assert any(r.levelname == "ERROR" and "policy rejected" in r.getMessage() for r in caplog.records)
    # the same bytes again (e.g. after a lost ETag) are not reported twice
    sync._etag = None
    assert sync.poll() == "rejected"
    assert len(rig.rejected()) == 1


def test_rejection_details_name_version_and_key(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(3)
    sync.poll()
    rig.server.envelope = rig.signer.envelope(2)
    sync.poll()
    stranger = Signer()
    rig.server.envelope = stranger.envelope(4)
    sync.poll()
    replay, unknown = rig.rejected()
    assert (replay["code"], replay["version"], replay["key_id"]) == ("rollback", 2, key_id(rig.signer.public))
    assert "older than version 3" in str(replay["reason"])
    # nothing inside an unverified payload is trusted: only the key id it claims is reported
    assert (unknown["version"], unknown["key_id"]) == (None, key_id(stranger.public))


def test_any_trusted_key_may_sign_during_rotation(rig: Rig) -> None:
    new = Signer()
    rig.extra_keys = (new.public,)
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1)
    sync.poll()
    rig.server.envelope = new.envelope(2)
    assert sync.poll() == "activated"
    assert sync.status()["active"]["key_id"] == key_id(new.public)  # type: ignore[index]


def test_the_rollback_floor_survives_a_restart_even_without_the_envelope(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(5)
    sync.poll()
    (rig.tmp / "state" / "policy" / "last-good.json").unlink()
    again = rig.sync()
    assert again.load_last_good() is None
    rig.server.envelope = rig.signer.envelope(4)
    assert again.poll() == "rejected"
    assert rig.rejected()[-1]["code"] == "rollback"


def test_the_last_good_policy_is_persisted_durably_and_enforced_after_a_restart(rig: Rig) -> None:
    sync = rig.sync()
    envelope = rig.signer.envelope(2)
    rig.server.envelope = envelope
    sync.poll()
    directory = rig.tmp / "state" / "policy"
    assert (directory / "last-good.json").read_bytes() == envelope  # byte for byte as received
    assert stat.S_IMODE((directory / "last-good.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["last-good.json", "sync-state.json"]

    rig.server.fail = ServerUnavailable("connection refused")  # rebooted without network
    again = rig.sync()
    loaded = again.load_last_good()
    assert loaded is not None and loaded.version == 2 and loaded.mode == "enforce"
    assert "last good policy" in loaded.source
    with pytest.raises(ServerUnavailable):
        again.poll()
    assert active_version(again) == 2
    assert rig.dry_run.calls == 1  # the verdict was persisted with it, not re-judged at boot


def test_a_tampered_last_good_file_is_not_loaded(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(2)
    sync.poll()
    path = rig.tmp / "state" / "policy" / "last-good.json"
    path.write_bytes(flip_payload_byte(path.read_bytes()))
    again = rig.sync()
    assert again.load_last_good() is None and again.current() is None
    assert rig.rejected()[-1]["code"] == "signature"


def test_a_crash_between_the_two_writes_is_finished_at_start(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1)
    sync.poll()
    store = PolicyStateStore(rig.tmp / "state")
    store.save_envelope(rig.signer.envelope(2))  # envelope written, state still says version 1
    again = rig.sync()
    loaded = again.load_last_good()
    assert loaded is not None and loaded.version == 2
    assert store.load_state().highest_version == 2


def test_a_corrupt_state_file_falls_back_to_the_last_good_version_as_floor(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(3)
    sync.poll()
    (rig.tmp / "state" / "policy" / "sync-state.json").write_text("{broken")
    again = rig.sync()
    assert active_version(again) is None
    again.load_last_good()
    assert active_version(again) == 3
    rig.server.envelope = rig.signer.envelope(2)
    assert again.poll() == "rejected"


def test_an_unsafe_policy_is_active_in_monitor_mode_only_and_reported(rig: Rig) -> None:
    rig.dry_run.verdict = SafetyVerdict(False, "it would stop 40 of 50 running processes", 50, 40)
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1, name="*")
    assert sync.poll() == "activated"
    current = sync.current()
    assert current is not None and current.version == 1
    assert current.monitor_reason == "policy unsafe: it would stop 40 of 50 running processes"
    [(kind, detail)] = rig.events.events
    assert kind == "policy_unsafe" and detail["version"] == 1 and detail["would_stop"] == 40
    # the verdict sticks to that version across a restart (no second report)
    again = rig.sync()
    reloaded = again.load_last_good()
    assert reloaded is not None and reloaded.monitor_reason == current.monitor_reason
    assert rig.events.types() == ["policy_unsafe"]


def test_a_monitor_mode_policy_needs_no_dry_run(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1, mode="monitor")
    sync.poll()
    assert rig.dry_run.calls == 0


def test_a_failed_dry_run_activates_nothing_and_is_retried(rig: Rig) -> None:
    rig.dry_run.error = CollectError("no /proc")
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1)
    with pytest.raises(CollectError):
        sync.poll()
    assert sync.current() is None
    rig.dry_run.error = None
    assert sync.poll() == "activated"  # refetched: the ETag was not remembered
    assert rig.server.requests == [None, None]


def test_when_the_active_policy_expires_enforcement_stops_and_it_is_reported_once(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.envelope = rig.signer.envelope(1, expires_at=START + timedelta(hours=1))
    sync.poll()
    current = sync.current()
    assert current is not None and current.monitor_reason is None
    rig.clock.advance(3600)
    expired = sync.current()
    assert expired is not None and expired.version == 1 and expired.mode == "enforce"
    assert expired.monitor_reason == "policy version 1 expired at 2030-01-01T01:00:00Z"
    sync.current()
    assert rig.events.types() == ["policy_expired"]
    assert sync.poll() == "not_modified"
    # reported once, even across a restart
    again = rig.sync()
    loaded = again.load_last_good()
    assert loaded is not None and loaded.monitor_reason is not None
    assert rig.events.types() == ["policy_expired"]
    # a fresh policy ends it
    rig.server.envelope = rig.signer.envelope(2, expires_at=START + timedelta(days=30))
    again.poll()
    fresh = again.current()
    assert fresh is not None and fresh.version == 2 and fresh.monitor_reason is None


def test_server_has_no_policy_yet(rig: Rig) -> None:
    sync = rig.sync()
    assert sync.poll() == "none"
    assert sync.current() is None


def test_server_failures_propagate_for_the_schedule_and_show_in_status(rig: Rig) -> None:
    sync = rig.sync()
    rig.server.fail = ServerUnavailable("boom", retry_after=7)
    with pytest.raises(ServerUnavailable):
        sync.poll()
    status = sync.status()
    assert status["failed"] == 1 and status["last_outcome"] == "failed" and status["last_error"] == "boom"


def test_a_start_that_cannot_finish_an_interrupted_activation_still_starts(rig: Rig) -> None:
    store = PolicyStateStore(rig.tmp / "state")
    store.save_envelope(rig.signer.envelope(1))  # written, but never judged nor recorded in the state
    rig.dry_run.error = CollectError("no /proc")
    sync = rig.sync()
    assert sync.load_last_good() is None
    rig.dry_run.error = None
    rig.server.envelope = rig.signer.envelope(1)
    assert sync.poll() == "activated"
