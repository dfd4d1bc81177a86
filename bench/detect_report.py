"""`make detect-report`: detection quality on real programs, as a table.

Runs the cases of the detection tests (tests/integration/p2p, tests/integration/benign) with
policies/default.yaml and the agent in report mode (bench.detect.probe), each in a network
namespace that has nothing but loopback:

* real BitTorrent clients (transmission-cli seeding, aria2c leeching, real data) under their
  own names and ports, then renamed with every port moved, seen by an agent inside the
  namespace and by one on the host;
* the same clients evading: renamed, tracker only, random high ports, a leecher nobody dials;
* the other families (eDonkey, Direct Connect, Tor, I2P for real; Gnutella, Soulseek, IPFS as
  stand-ins, also renamed) and approved P2P (Syncthing);
* the benign corpus, which must give no P2P finding.

For each case: what was expected, which P2P rules fired, the time to detection in scans
(counted from the first scan that saw the process connected to a peer; 1 = that very scan)
and in seconds since the process started, and the behaviour score with the signals behind it
(for a benign case, the highest score any of its processes reached). Needs root; exit 1 when a
P2P case is missed or a benign case is flagged (CI runs it).

    python -m bench.detect_report [--only p2p|families|benign]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.detect.benign_cases import CASES, missing_packages, run_benign
from bench.detect.clients import missing_clients
from bench.detect.family_cases import CASES as FAMILY_CASES
from bench.detect.family_cases import missing_package, run_family
from bench.detect.observe import REPO, Observer, Watched
from bench.detect.p2p_cases import EVASIVE, NAMED, RENAMED, SwarmRun, run_swarm
from bench.detect.sandbox import missing_requirements
from endpoint_agent.policy.p2p import P2PScore, score
from endpoint_agent.types import P2PFeatures

POLICY = REPO / "policies" / "default.yaml"
BEHAVIOUR_RULE = "p2p-behaviour"


@dataclass
class Row:
    case: str
    expected: str
    found: str
    scans: str
    seconds: str
    ok: bool
    note: str = ""
    breakdown: str = "-"


def _features(raw: dict[str, object]) -> P2PFeatures:
    fields = {f.name: f for f in dataclasses.fields(P2PFeatures)}
    return P2PFeatures(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields})  # type: ignore[arg-type]


def best_score(observer: Observer, pids: set[int] | None = None) -> P2PScore | None:
    """The highest behaviour score any (or one of `pids`) process reached in any scan."""
    best: P2PScore | None = None
    for line in observer.lines:
        for proc in line["processes"]:
            if proc.get("features") is None or (pids is not None and proc["pid"] not in pids):
                continue
            result = score(_features(proc["features"]))
            if best is None or result.score > best.score:
                best = result
    return best


def _breakdown(result: P2PScore | None) -> str:
    if result is None or result.score == 0:
        return "0"
    return f"{result.score}: {'; '.join(result.signals)}"


def _detection(w: Watched) -> tuple[str, str]:
    if w.detection_scan is None:
        return "-", "-"
    seconds = f"{w.seconds_to_detection:.1f}" if w.seconds_to_detection is not None else "-"
    n = w.scans_to_detection
    if n is None or n < 1:
        return "at start", seconds  # a name rule needs no peer
    return str(n), seconds


def _p2p_row(case: str, w: Watched, observer: Observer, *, by: str, payload_ok: bool) -> Row:
    found = ", ".join(w.rule_ids) or "-"
    scans, seconds = _detection(w)
    if by == "name":
        ok = any(rule != BEHAVIOUR_RULE for rule in w.rule_ids)
    else:  # behaviour alone: no name or port rule may be what caught it
        ok = w.rule_ids == (BEHAVIOUR_RULE,)
    return Row(
        case, f"p2p by {by}", found, scans, seconds, ok and payload_ok, "" if payload_ok else "no data",
        _breakdown(best_score(observer, {w.pid})),
    )  # fmt: skip


def p2p_rows(workdir: Path) -> list[Row]:
    named = run_swarm(NAMED, POLICY, workdir / "named")
    renamed = run_swarm(RENAMED, POLICY, workdir / "renamed", places=("inside", "host"))
    evasive = run_swarm(EVASIVE, POLICY, workdir / "evasive")
    rows: list[Row] = []

    def add(run: SwarmRun, place: str, by: str, suffix: str = "") -> None:
        view = run.views[place]
        for w in (view.seeder, view.leecher):
            rows.append(_p2p_row(f"{w.label}{suffix}", w, view.observer, by=by, payload_ok=run.payload_ok))

    add(named, "inside", "name")
    add(renamed, "inside", "behaviour")
    add(renamed, "host", "behaviour", " from host netns")
    add(evasive, "inside", "behaviour", ", evasive")
    return rows


def family_rows(workdir: Path) -> list[Row]:
    rows: list[Row] = []
    for case in FAMILY_CASES:
        expected = "approved: none" if case.approved else f"{case.family}"
        if case.exact:
            expected += " by behaviour"
        missing = missing_package(case)
        if missing:
            rows.append(Row(case.name, expected, "skipped", "-", "-", False, f"missing {missing}"))
            continue
        run = run_family(case, POLICY, workdir / case.name.split()[0])
        found = ", ".join(f"{rule} ({run.actions[rule]})" for rule in sorted(run.found)) or "-"
        pids = {w.pid for w in run.seen}
        note = "" if run.active else "never showed a socket"
        rows.append(
            Row(
                case.name, expected, found, "-", "-", run.ok, note, _breakdown(best_score(run.observer, pids))
            )
        )
    return rows


def benign_rows(workdir: Path) -> list[Row]:
    rows: list[Row] = []
    for case in CASES:
        missing = missing_packages(case)
        if missing:
            rows.append(Row(case.name, "none", "skipped", "-", "-", False, f"missing {' '.join(missing)}"))
            continue
        run = run_benign(case, POLICY, workdir / case.name)
        found = "; ".join(run.flagged) or "-"
        note = f"max {run.max_peers} peers, {run.max_udp_sockets} UDP sockets/process"
        if not run.active:
            note = "saw no connection"
        rows.append(
            Row(case.name, "none", found, "-", "-", not run.flagged and run.active, note,
                _breakdown(best_score(run.observer)))
        )  # fmt: skip
    return rows


def render(rows: list[Row]) -> str:
    header = ("case", "expected", "found (p2p rules)", "scans", "seconds", "ok", "note", "behaviour score")
    table = [header] + [
        (r.case, r.expected, r.found, r.scans, r.seconds, "yes" if r.ok else "NO", r.note, r.breakdown)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.detect_report", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["p2p", "families", "benign"])
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"detect-report: {reason} (run it as root)", file=sys.stderr)
        return 2
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="detect-report-") as tmp:
        work = Path(tmp)
        if args.only in (None, "p2p"):
            missing = missing_clients()
            if missing:
                print(f"detect-report: P2P cases skipped, missing Debian packages: {' '.join(missing)}")
            else:
                rows += p2p_rows(work / "p2p")
        if args.only in (None, "families"):
            rows += family_rows(work / "families")
        if args.only in (None, "benign"):
            rows += benign_rows(work / "benign")
    print(render(rows))
    p2p = [r for r in rows if r.expected not in ("none", "approved: none")]
    benign = [r for r in rows if r.expected in ("none", "approved: none")]
    false_alarms = sum(1 for r in benign if r.found not in ("-", "skipped"))
    print(
        f"\nP2P and anonymity networks detected as expected: {sum(r.ok for r in p2p)}/{len(p2p)}; "
        f"benign false alarms: {false_alarms}/{len(benign)}; "
        f"policy {POLICY.relative_to(REPO)}; {time.monotonic() - started:.0f} s"
    )
    print(
        "scans: from the first scan that saw the process connected to a peer (1 = that scan; "
        "'at start': flagged by name before any peer); seconds: since the process started. "
        "P2P cases scan every 1 s, benign cases every 0.5 s. behaviour score: the highest reached, "
        "with its signals (a match needs 3 points, 8 peers and one peer signal)."
    )
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
