"""What policy sync keeps on disk, so a reboot without network still enforces and never goes back.

    STATE_DIR/policy/last-good.json   the active envelope, byte for byte as received (re-verified at start)
    STATE_DIR/policy/sync-state.json  the highest version ever activated, its payload hash and the
                                      safe-activation verdict for it

The envelope is written before the state, each atomically: after a crash between the two, the
envelope is newer than the state says and the agent finishes the activation at start; the
state never claims a version whose envelope is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from endpoint_agent.errors import StoreError
from endpoint_agent.sync.durable import atomic_write, read_small
from endpoint_contract.envelope import MAX_ENVELOPE_BYTES

POLICY_DIR = "policy"
LAST_GOOD_FILE = "last-good.json"
STATE_FILE = "sync-state.json"
_MAX_STATE_BYTES = 64 * 1024


class SyncState(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    highest_version: int = Field(default=0, ge=0)  # never decreases: the rollback floor
    highest_sha256: str | None = None  # sha256 (hex) of that version's payload bytes
    monitor_reason: str | None = None  # why that version may not enforce (safe activation), else None
    expired_reported: int | None = None  # the version whose expiry was already reported


class PolicyStateStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / POLICY_DIR
        self.envelope_path = self.directory / LAST_GOOD_FILE
        self.state_path = self.directory / STATE_FILE

    def load_state(self) -> SyncState:
        """The persisted state, a fresh one when none exists; StoreError when it is unreadable."""
        raw = read_small(self.state_path, _MAX_STATE_BYTES)
        if raw is None:
            return SyncState()
        try:
            return SyncState.model_validate(json.loads(raw))
        except (ValueError, UnicodeDecodeError, ValidationError) as exc:
            raise StoreError(f"{self.state_path}: not a valid sync state: {exc}".splitlines()[0]) from exc

    def save_state(self, state: SyncState) -> None:
        data = json.dumps(state.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"
        atomic_write(self.state_path, data.encode("utf-8"), mode=0o600)

    def load_envelope(self) -> bytes | None:
        """The last good envelope's bytes, None when there is none; StoreError when unreadable."""
        return read_small(self.envelope_path, MAX_ENVELOPE_BYTES)

    def save_envelope(self, envelope: bytes) -> None:
        atomic_write(self.envelope_path, envelope, mode=0o600)


__all__ = ["LAST_GOOD_FILE", "POLICY_DIR", "STATE_FILE", "PolicyStateStore", "SyncState"]
