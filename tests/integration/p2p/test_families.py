"""The other P2P families and approved P2P, for real in loopback-only namespaces (bench.detect.family_cases).

aMule's daemon, microdc2 logging in to a hub, Tor and i2pd run for real; Gnutella, Soulseek and
IPFS, which Debian does not package, run as socket-level stand-ins under the clients' names and,
renamed with their ports moved, must still be caught by behaviour alone. Tor and I2P are
reported, never blocked; Syncthing from its package is approved and gets no finding at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.detect.family_cases import CASES, FamilyCase, missing_package, run_family
from bench.detect.sandbox import missing_requirements
from tests.support.ci_skip import require

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_family_is_caught_as_expected(case: FamilyCase, tmp_path: Path) -> None:
    require(missing_requirements())
    missing = missing_package(case)
    require(f"missing Debian package: {missing}" if missing else None)
    run = run_family(case, DEFAULT_POLICY, tmp_path)
    assert run.active, f"{case.name}: {case.program} never showed a socket (did it start?)"
    if case.approved:
        assert run.found == frozenset(), f"{case.name}: approved software was flagged: {run.actions}"
        return
    assert case.expected <= run.found, f"{case.name}: expected {sorted(case.expected)}, got {run.actions}"
    if case.exact:
        assert run.found == case.expected, f"{case.name}: only behaviour should catch it: {run.actions}"
    if case.family in ("Tor", "I2P"):
        assert set(run.actions.values()) == {"reported"}, run.actions  # reported, never blocked
