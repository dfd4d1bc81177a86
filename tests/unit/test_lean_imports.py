"""The standalone service keeps heavy optional libraries out of its memory (RSS budget).

cryptography (signed envelopes) and httpx (server mode) cost the agent ~8 MB and ~10 MB of RSS
each; a service started with a plain YAML policy must not load them. Checked in a fresh
interpreter, so what other tests imported does not count.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys, tempfile
from pathlib import Path
from endpoint_agent.service import build_service
from endpoint_agent.settings import load_settings
state = tempfile.mkdtemp()
overrides = {"policy": "policies/default.yaml", "state_dir": state, "process_events": False,
             "exec_gate": "off", "dns_filter": "off"}
settings = load_settings(overrides, environ={})
service = build_service(settings)
service.policy.current()
service.close()
print(" ".join(sorted(m for m in ("cryptography", "httpx") if m in sys.modules)) or "-")
"""


def test_a_yaml_policy_service_loads_neither_cryptography_nor_httpx() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "-"
