"""`--version` on a tool and on every command of it (the three tools share this one definition)."""

from __future__ import annotations

import argparse

from endpoint_agent import __version__


def add_version(parser: argparse.ArgumentParser, prog: str) -> None:
    """Call after every subcommand is added: `TOOL --version` and `TOOL CMD [SUB...] --version`."""
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_version(sub, prog)
