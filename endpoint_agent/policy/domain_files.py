"""Domain category lists kept in files next to the policy: `domain_lists: {gambling: {file: gambling.txt}}`.

A list file holds one domain pattern per line (`#` starts a comment). It is read when a policy
file is loaded from disk, and its entries replace the `{file: ...}` reference, so the model
(and so a signed envelope made by `endpoint-admin sign`) always carries the list itself: an
agent never opens a file that a server-sent policy names.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Any

from endpoint_agent.errors import PolicyLoadError

MAX_LIST_BYTES = 4 * 1024 * 1024


def resolve_domain_list_files(raw: dict[str, Any], base_dir: Path, source: str) -> dict[str, Any]:
    """`raw` with every `{file: NAME}` of `domain_lists` replaced by the file's patterns."""
    lists = raw.get("domain_lists")
    if not isinstance(lists, dict) or not any(_is_file_ref(v) for v in lists.values()):
        return raw
    resolved = {
        name: _read_list(base_dir, value["file"], source, name) if _is_file_ref(value) else value
        for name, value in lists.items()
    }
    return {**raw, "domain_lists": resolved}


def _is_file_ref(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"file"}


def _read_list(base_dir: Path, name: object, source: str, list_name: object) -> list[str]:
    where = f"{source}: domain_lists.{list_name}.file"
    if not isinstance(name, str) or not name.strip():
        raise PolicyLoadError(f"{where}: expected a file name next to the policy")
    relative = PurePath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise PolicyLoadError(f"{where}: {name!r} must be a relative path inside the policy's directory")
    path = base_dir / relative
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise PolicyLoadError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_LIST_BYTES:
        raise PolicyLoadError(f"{where}: {path} is over {MAX_LIST_BYTES // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(f"{where}: {path} is not UTF-8 (bad byte at offset {exc.start})") from None
    entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    out = [entry for entry in entries if entry]
    if not out:
        raise PolicyLoadError(f"{where}: {path} lists no domains")
    return out


def policy_dir(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().absolute().parent


__all__ = ["MAX_LIST_BYTES", "policy_dir", "resolve_domain_list_files"]
