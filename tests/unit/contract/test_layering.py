"""The shared contract stands alone: the agent, the server and the admin tool import it, never the reverse."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import endpoint_contract

REPO = Path(__file__).resolve().parents[3]
# pydantic and cryptography, and what they load themselves.
ALLOWED_THIRD_PARTY = {
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
    "cryptography",
}


def test_the_contract_imports_nothing_of_the_agent_server_or_admin_tool() -> None:
    modules = sorted(m.name for m in pkgutil.iter_modules(endpoint_contract.__path__))
    assert modules, "endpoint_contract has no modules"
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('endpoint_contract.' + m)\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert not loaded & {"endpoint_agent", "server_stub", "endpoint_admin", "httpx", "sqlalchemy", "fastapi"}
    third_party = {
        name
        for name in loaded
        if name not in sys.stdlib_module_names and not name.startswith("_") and name != "endpoint_contract"
    }
    assert third_party <= ALLOWED_THIRD_PARTY, third_party
