"""Docs and comments cite only files inside the repository: no design notes kept elsewhere, no issue ids."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIRS = (
    "endpoint_agent",
    "endpoint_contract",
    "server_stub",
    "endpoint_admin",
    "tests",
    "bench",
    "demo",
    "policies",
)
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt"}
# Built from parts, so this file does not match itself.
FORBIDDEN = re.compile("DESIGN" + r"\.md|\bissues? #?[0-9]+", re.IGNORECASE)


def offending(root: Path) -> list[str]:
    out = []
    paths = [root / "README.md", *(p for d in DIRS for p in (root / d).rglob("*") if p.suffix in SUFFIXES)]
    for path in paths:
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if FORBIDDEN.search(line):
                out.append(f"{path.relative_to(root)}:{number}: {line.strip()[:100]}")
    return out


def test_nothing_cites_a_file_outside_the_repository_or_an_issue_number() -> None:
    found = offending(REPO)
    assert not found, "\n".join(found)


def test_the_check_sees_both(tmp_path: Path) -> None:
    (tmp_path / "endpoint_agent").mkdir()
    (tmp_path / "README.md").write_text("fine\n")
    (tmp_path / "endpoint_agent" / "x.py").write_text(
        "# see " + "DESIGN" + ".md\n# fixed in " + "iss" + "ue 7\n"
    )
    assert [line.split(":")[1] for line in offending(tmp_path)] == ["1", "2"]
