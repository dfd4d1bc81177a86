"""Policies from a local file: `scan`, `check-policy`, and the service's standalone mode (`--policy FILE`).

    policy = load_policy("policies/default.yaml")            # YAML, or a signed envelope
    provider = FilePolicyProvider(path, load=file_policy_loader(keys))   # reloaded when it changes

A signed envelope is verified against the trusted keys before its payload is read. Without any
trusted key, a report-only reader may still read it (with a warning); nothing is ever signalled
on the strength of an unverified envelope: the service runs such a policy in monitor mode.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from endpoint_agent.errors import AgentError, PolicyError, PolicySignatureError
from endpoint_agent.policy import ActivePolicy, Policy, load_policy_file
from endpoint_agent.policy.load import DecodeEnvelope

logger = logging.getLogger(__name__)

PolicyLoader = Callable[[Path], ActivePolicy]
UNVERIFIED = "signature not verified (no trusted key): report only"


def _trusted_key_paths(public_keys: Sequence[str] | None) -> Sequence[str]:
    """--public-key flags, else the agent's configured keys (ENDPOINT_AGENT_PUBLIC_KEY, config file)."""
    if public_keys:
        return public_keys
    from endpoint_agent.settings import load_settings

    try:
        return [str(p) for p in load_settings({}).public_keys]
    except AgentError:
        return []  # unrelated bad settings must not break a one-shot scan; keys are then simply absent


def _envelope_decoder(
    public_keys: Sequence[str] | None,
    *,
    report_only: bool,
    err: TextIO,
    on_unverified: Callable[[], None] | None = None,
) -> DecodeEnvelope:
    def decode(raw: bytes) -> Policy:
        # Imported here, for envelopes only: cryptography costs the service ~8 MB of RSS.
        from endpoint_contract.envelope import load_public_key, read_unverified, verify_envelope

        keys = [load_public_key(Path(p)) for p in _trusted_key_paths(public_keys)]
        if keys:
            return verify_envelope(raw, keys, Policy).policy
        if not report_only:
            raise PolicySignatureError(
                "refusing to enforce a signed envelope whose signature cannot be checked; "
                "pass --public-key FILE"
            )
        print(
            "endpoint-agent: warning: signature NOT verified (no --public-key given); report only",
            file=err,
        )
        if on_unverified is not None:
            on_unverified()
        return read_unverified(raw, Policy).policy

    return decode


def load_policy(
    path: str,
    public_keys: Sequence[str] | None = None,
    *,
    report_only: bool = True,
    err: TextIO = sys.stderr,
    on_unverified: Callable[[], None] | None = None,
) -> Policy:
    """A policy file (YAML) or a signed envelope, verified when trusted keys are known.

    `on_unverified` is called when a report-only reader got an envelope nobody could verify.
    """
    decoder = _envelope_decoder(public_keys, report_only=report_only, err=err, on_unverified=on_unverified)
    return load_policy_file(Path(path), decode_envelope=decoder)


def _load_policy_file(path: Path) -> ActivePolicy:
    return ActivePolicy.from_policy(load_policy_file(path), str(path))


class FilePolicyProvider:
    """Standalone mode: a local policy file, reloaded when it changes; a bad edit keeps the last good one."""

    def __init__(self, path: Path, *, load: PolicyLoader | None = None) -> None:
        self._path = path
        self._load = load or _load_policy_file
        self._stamp = self._file_stamp()
        self._active = self._load(path)  # errors here stop the start

    def current(self) -> ActivePolicy:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                policy = self._load(self._path)
            except PolicyError as exc:
                logger.error(
                    "policy file changed but is not usable; keeping version %d: %s", self._active.version, exc
                )
            else:
                logger.info("policy reloaded: %s version %d (%s)", policy.name, policy.version, policy.mode)
                self._active = policy
        return self._active

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)


def file_policy_loader(public_keys: Sequence[Path]) -> PolicyLoader:
    """The service's loader for --policy FILE: YAML, or a signed envelope checked with `public_keys`.

    An envelope no trusted key could verify is read report-only: it only monitors, whatever its
    own mode says.
    """
    keys = [str(k) for k in public_keys] or None

    def load(path: Path) -> ActivePolicy:
        unverified: list[bool] = []
        policy = load_policy(str(path), keys, on_unverified=lambda: unverified.append(True))
        active = ActivePolicy.from_policy(policy, str(path))
        if unverified:
            logger.warning("%s: %s", path, UNVERIFIED)
            return replace(active, monitor_reason=UNVERIFIED)
        return active

    return load


__all__ = ["UNVERIFIED", "FilePolicyProvider", "PolicyLoader", "file_policy_loader", "load_policy"]
