"""The benign corpus gives no P2P finding (bench.detect.benign_cases, in loopback-only namespaces).

Every case is busy on the network (the probe sees its connections or UDP sockets: checked, so a
case that silently did nothing cannot pass), and none of its processes may get a finding of category p2p
from policies/default.yaml, behaviour rule included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.detect.benign_cases import CASES, BenignCase, missing_packages, run_benign
from bench.detect.sandbox import missing_requirements
from tests.support.ci_skip import require

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_benign_workload_gives_no_p2p_finding(case: BenignCase, tmp_path: Path) -> None:
    require(missing_requirements())
    missing = missing_packages(case)
    require(f"missing Debian packages: {' '.join(missing)}" if missing else None)
    run = run_benign(case, DEFAULT_POLICY, tmp_path)
    assert run.active, f"{case.name}: the probe saw no established connection and no UDP socket"
    assert run.flagged == [], f"{case.name}: {run.flagged}"
