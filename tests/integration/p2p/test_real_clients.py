"""Real BitTorrent clients in a loopback-only namespace, watched by the agent in report mode.

transmission-cli seeds a payload made by mktorrent; aria2c downloads it (real data); a tracker
and twelve idle swarm members on loopback make it a swarm (bench.detect.p2p_cases). The agent
(bench.detect.probe: collector -> behaviour tracker -> policy engine, never enforcing) must

  (a) flag the clients by name with policies/default.yaml;
  (b) flag copies of the same binaries under unrelated names, with every port moved off the
      well-known ones, by behaviour (transmission within 3 scans of its first peer connection);
  (c) see the renamed swarm from the host namespace, and say which namespace it is in;
  (d) flag an evasive swarm by behaviour -- renamed, tracker only, random high ports, a leecher
      that nobody dials (no inbound peer, no UDP, no BitTorrent port) -- seeder and leecher
      within 3 scans, by the scattered networks its peers come from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.detect.clients import missing_clients
from bench.detect.observe import Watched
from bench.detect.p2p_cases import EVASIVE, NAMED, RENAMED, SwarmRun, run_swarm
from bench.detect.sandbox import missing_requirements
from tests.support.ci_skip import require

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"
BEHAVIOUR_RULE = "p2p-behaviour"
MAX_SCANS_TO_DETECTION = 3


def _require_everything() -> None:
    require(missing_requirements())
    missing = missing_clients()
    require(f"missing Debian packages: {' '.join(missing)}" if missing else None)


@pytest.fixture(scope="module")
def named_swarm(tmp_path_factory: pytest.TempPathFactory) -> SwarmRun:
    _require_everything()
    return run_swarm(NAMED, DEFAULT_POLICY, tmp_path_factory.mktemp("named-swarm"))


@pytest.fixture(scope="module")
def renamed_swarm(tmp_path_factory: pytest.TempPathFactory) -> SwarmRun:
    _require_everything()
    return run_swarm(
        RENAMED, DEFAULT_POLICY, tmp_path_factory.mktemp("renamed-swarm"), places=("inside", "host")
    )


@pytest.fixture(scope="module")
def evasive_swarm(tmp_path_factory: pytest.TempPathFactory) -> SwarmRun:
    _require_everything()
    return run_swarm(EVASIVE, DEFAULT_POLICY, tmp_path_factory.mktemp("evasive-swarm"))


def _reason(watched: Watched, rule_id: str) -> str:
    return next(str(v["reason"]) for v in watched.violations if v["rule_id"] == rule_id)


def _assert_flagged_by_behaviour_in_time(watched: Watched) -> None:
    assert watched.rule_ids == (BEHAVIOUR_RULE,), f"{watched.label}: {watched.violations}"
    assert watched.first_peer_scan is not None and watched.detection_scan is not None
    assert watched.detection_scan - watched.first_peer_scan < MAX_SCANS_TO_DETECTION, (
        f"{watched.label}: first peer in scan {watched.first_peer_scan}, flagged in {watched.detection_scan}"
    )


def test_named_clients_exchange_data_and_are_flagged_by_name(named_swarm: SwarmRun) -> None:
    assert named_swarm.payload_ok, "aria2c did not receive the seeder's payload intact"
    view = named_swarm.views["inside"]
    assert view.seeder.first_peer_scan is not None and view.leecher.first_peer_scan is not None
    assert "p2p-transmission" in view.seeder.rule_ids
    assert "'transmission-cli'" in _reason(view.seeder, "p2p-transmission")
    assert "p2p-aria2" in view.leecher.rule_ids


def test_renamed_clients_on_moved_ports_are_flagged_by_behaviour(renamed_swarm: SwarmRun) -> None:
    assert renamed_swarm.payload_ok, "the renamed leecher did not receive the payload intact"
    view = renamed_swarm.views["inside"]
    assert view.seeder.label.startswith("notes-sync")
    _assert_flagged_by_behaviour_in_time(view.seeder)
    reason = _reason(view.seeder, BEHAVIOUR_RULE)
    assert "peers" in reason and "score" in reason and "40002" in reason, reason
    # aria2c (renamed too) is flagged by behaviour as well, once it has dialled the swarm: it holds
    # back a few seconds after its first peer, so only the transmission client is held to 3 scans.
    assert view.leecher.rule_ids == (BEHAVIOUR_RULE,), view.leecher.violations


def test_client_in_another_namespace_is_flagged_from_the_host(renamed_swarm: SwarmRun) -> None:
    view = renamed_swarm.views["host"]
    _assert_flagged_by_behaviour_in_time(view.seeder)
    violation = next(v for v in view.seeder.violations if v["rule_id"] == BEHAVIOUR_RULE)
    assert violation["connection"]["netns"] == renamed_swarm.netns_id
    assert renamed_swarm.netns_id in violation["reason"]
    # The agent inside the namespace sees its own namespace: nothing to name there.
    inside = next(
        v for v in renamed_swarm.views["inside"].seeder.violations if v["rule_id"] == BEHAVIOUR_RULE
    )
    assert "netns" not in inside.get("connection", {})


def test_evasive_tracker_only_swarm_is_flagged_by_behaviour(evasive_swarm: SwarmRun) -> None:
    assert evasive_swarm.payload_ok, "the evasive leecher did not receive the payload intact"
    view = evasive_swarm.views["inside"]
    for watched in (view.seeder, view.leecher):
        _assert_flagged_by_behaviour_in_time(watched)
    leecher = _reason(view.leecher, BEHAVIOUR_RULE)
    assert "peers scattered over" in leecher, leecher
    assert "accepts" not in leecher and "TCP and UDP" not in leecher, leecher  # nothing but fan-out
    assert "peers scattered over" in _reason(view.seeder, BEHAVIOUR_RULE)
