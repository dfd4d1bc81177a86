"""Reading policy files: size cap, YAML without surprises, signed-envelope detection.

Every failure becomes PolicyLoadError (the bytes are not a policy document) or
PolicyValidationError (the document is not a valid policy), with one line per problem that
names the file, the rule and the field.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from endpoint_agent.errors import PolicyLoadError, PolicyValidationError
from endpoint_agent.policy.diagnostics import validation_problems
from endpoint_agent.policy.domain_files import policy_dir, resolve_domain_list_files
from endpoint_agent.policy.model import Policy

MAX_POLICY_BYTES = 4 * 1024 * 1024

# Given the raw bytes of a signed envelope, returns the verified policy (or its document
# bytes) and raises PolicySignatureError when no trusted key vouches for it.
DecodeEnvelope = Callable[[bytes], "bytes | Policy"]


def load_policy_file(
    path: str | os.PathLike[str], *, decode_envelope: DecodeEnvelope | None = None
) -> Policy:
    """A policy from a YAML/JSON file, or from a signed envelope when `decode_envelope` is given."""
    source = str(path)
    data = _read_capped(Path(path), source)
    if is_envelope(data):
        if decode_envelope is None:
            raise PolicyLoadError(f"{source}: is a signed envelope; pass trusted keys to verify it")
        decoded = decode_envelope(data)
        if isinstance(decoded, Policy):
            return decoded
        return parse_policy(decoded, source=f"{source} (signed payload)")
    return parse_policy(data, source, base_dir=policy_dir(path))


def parse_policy(text: str | bytes, source: str, *, base_dir: Path | None = None) -> Policy:
    """A policy from the text of a YAML (or JSON) document; `source` names it in errors.

    With `base_dir` (the policy file's directory), `domain_lists` entries `{file: NAME}` are read
    from there; without it (a signed payload) they are an error.
    """
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_POLICY_BYTES:
        raise PolicyLoadError(f"{source}: is {size} bytes, over the {_LIMIT} limit for a policy")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyLoadError(f"{source}: is not UTF-8 text (bad byte at offset {exc.start})") from None
    raw = _parse_yaml(text, source)
    if raw is None:
        raise PolicyLoadError(f"{source}: is empty; expected a mapping with name, version and rules")
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, list) else f"a {type(raw).__name__}"
        raise PolicyLoadError(f"{source}: top level must be a mapping (name, version, rules), got {kind}")
    if _looks_like_envelope(raw):
        raise PolicyLoadError(f"{source}: is a signed envelope; pass trusted keys to verify it")
    if base_dir is not None:
        raw = resolve_domain_list_files(raw, base_dir, source)
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(source, exc, raw)
        summary = problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} more)"
        raise PolicyValidationError(summary, problems) from None


def is_envelope(data: bytes) -> bool:
    """True for a JSON object with `payload` and `signatures` (the signed form of a policy)."""
    if data.lstrip()[:1] != b"{":
        return False
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and _looks_like_envelope(obj)


def _looks_like_envelope(obj: dict[Any, Any]) -> bool:
    return "payload" in obj and "signatures" in obj


def _read_capped(path: Path, source: str) -> bytes:
    # Open first, then fstat the descriptor: no window in which the path can be swapped for a
    # FIFO or a device, and O_NONBLOCK keeps a FIFO from hanging the open.
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    )
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PolicyLoadError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise PolicyLoadError(f"{source}: is a directory, expected a policy file") from None
    except OSError as exc:
        if path.is_dir():
            raise PolicyLoadError(f"{source}: is a directory, expected a policy file") from None
        raise PolicyLoadError(f"{source}: cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise PolicyLoadError(f"{source}: is a directory, expected a policy file")
        if not stat.S_ISREG(info.st_mode):
            raise PolicyLoadError(f"{source}: is not a regular file")
        if info.st_size > MAX_POLICY_BYTES:
            raise PolicyLoadError(f"{source}: is {info.st_size} bytes, over the {_LIMIT} limit for a policy")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_POLICY_BYTES + 1)
        except OSError as exc:
            raise PolicyLoadError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_POLICY_BYTES:  # grew after fstat
        raise PolicyLoadError(f"{source}: is over the {_LIMIT} limit for a policy")
    return data


_LIMIT = f"{MAX_POLICY_BYTES // (1024 * 1024)} MiB"


# libyaml's parser when present (about 4x faster on large policies), the pure-Python one otherwise.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _PolicyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """A safe loader that rejects duplicate keys (PyYAML keeps the last silently) and aliases
    (a few bytes of nested aliases expand into a huge document: the "billion laughs")."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        if node in self.constructed_objects:  # a node is only reached twice through an alias
            problem = "aliases (*name) are not allowed in policy files"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_PolicyLoader)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise PolicyLoadError(f"{source}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolicyLoadError(f"{source}: invalid YAML: {first}") from None
    except RecursionError:
        raise PolicyLoadError(f"{source}: invalid YAML: nested too deeply") from None
