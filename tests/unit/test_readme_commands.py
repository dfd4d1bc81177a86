"""Every endpoint-agent/-admin/-server command in the READMEs parses with the tool's own parser (so a
renamed flag cannot leave the docs behind), keys/ and .run/ are ignored by git."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from endpoint_admin.cli import build_parser as admin_parser
from endpoint_agent.cli import build_parser as agent_parser
from server_stub.cli import build_parser as server_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "packaging/README.md"]
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "endpoint-agent": agent_parser,
    "endpoint-admin": admin_parser,
    "endpoint-server": server_parser,
}
_SEPARATORS = {"&", "&&", ";", "|", "||"}
_PREFIXES = {"sudo", "env", "export"}


def commands(doc: str) -> Iterator[tuple[str, list[str]]]:
    text = (ROOT / doc).read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line:
                continue
            words = shlex.split(line.replace("$(", "( ").replace("%", ""), posix=True)
            at_command = True  # a tool counts where a command starts (not `pipx install endpoint-agent`)
            for i, word in enumerate(words):
                if word in _SEPARATORS or word.startswith("("):
                    at_command = True
                    continue
                if at_command and (word in _PREFIXES or "=" in word):
                    continue
                starts, at_command = at_command, False
                if starts and word in PARSERS:
                    args: list[str] = []
                    for arg in words[i + 1 :]:
                        if (
                            arg in _SEPARATORS
                            or arg.endswith(")")
                            or arg.lstrip("12&").startswith((">", "<"))
                        ):
                            break  # the end of this command, or a redirection
                        args.append(arg)
                    yield word, args


CASES = [(doc, tool, args) for doc in DOCS for tool, args in commands(doc)]


def test_the_docs_show_commands_of_every_tool() -> None:
    assert {tool for _, tool, _ in CASES} == set(PARSERS)
    assert len(CASES) > 20


@pytest.mark.parametrize(("doc", "tool", "args"), CASES, ids=[f"{d}:{t} {' '.join(a)}" for d, t, a in CASES])
def test_a_documented_command_parses(doc: str, tool: str, args: list[str]) -> None:
    try:
        PARSERS[tool]().parse_args(args)
    except SystemExit as exc:
        assert exc.code == 0, f"{doc}: `{tool} {' '.join(args)}` does not parse"


@pytest.mark.parametrize("path", ["keys/policy-signing.key", ".run/agent/status.json", "dist/x.deb"])
def test_generated_files_are_ignored_by_git(path: str) -> None:
    done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
    assert done.returncode == 0, f"{path} is not ignored by git"
