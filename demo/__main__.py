"""`make demo`: the agent finds a stand-in P2P client on this machine.

Safe on anyone's workstation: it only reports (no process is signalled), its stand-in listens on 127.0.0.1
only, and everything it started is stopped at the end.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from demo.standin import StandIn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"


def _free_bittorrent_port() -> int:
    for port in range(6881, 6890):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("demo: every BitTorrent port 6881-6889 on 127.0.0.1 is busy")


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="endpoint-demo-") as tmp:
        port = _free_bittorrent_port()
        _step(f"starting a harmless stand-in named 'qbittorrent-nox' listening on 127.0.0.1:{port}")
        standin = StandIn(Path(tmp), "qbittorrent-nox", port)
        try:
            print(f"    pid {standin.pid}, exe {standin.exe}")
            _step(f"endpoint-agent check-policy {DEFAULT_POLICY.relative_to(ROOT)}")
            agent = [sys.executable, "-m", "endpoint_agent"]
            subprocess.run([*agent, "check-policy", str(DEFAULT_POLICY)], check=True)
            _step(f"endpoint-agent scan --policy {DEFAULT_POLICY.relative_to(ROOT)}   (report only)")
            scan = subprocess.run([*agent, "scan", "--policy", str(DEFAULT_POLICY)], check=False)
            if scan.returncode not in (0, 1):
                print("demo: the scan failed", file=sys.stderr)
                return 1
            _step("the same findings as NDJSON (--json), this stand-in's only")
            out = subprocess.run(
                [*agent, "scan", "--policy", str(DEFAULT_POLICY), "--json"],
                check=False,
                capture_output=True,
                text=True,
            )
            mine = [line for line in out.stdout.splitlines() if f'"pid": {standin.pid},' in line]
            for line in mine:
                print("    " + line)
            if not mine:
                print("demo: the stand-in was NOT flagged", file=sys.stderr)
                return 1
            print(f"\nThe stand-in was flagged by {len(mine)} rule(s); nothing was signalled.")
        finally:
            standin.stop()
            _step("stand-in stopped; temporary files removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
