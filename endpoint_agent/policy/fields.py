"""Value types of the policy language: each parses and checks one kind of YAML value.

Every validator raises ValueError with a short sentence; `diagnostics` turns it into one line
naming the file, the rule and the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, PlainValidator, WithJsonSchema

from endpoint_agent.policy.domains import normalize_pattern
from endpoint_agent.policy.literals import compile_glob

MAX_PATTERN_LENGTH = 1024
RULE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"  # JSON Schema form; Python uses fullmatch below
# fullmatch everywhere: `$` would also accept a trailing newline.
_RULE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_PORT_RE = re.compile(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?")
_URL_RE = re.compile(r"https?://\S+")
_DRIVE_RE = re.compile(r"[A-Za-z]:[\\/]")


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive port range; a single port is a range of one."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def _as_list(value: Any) -> Any:
    """YAML allows one value or a list (any of); both become a tuple. Empty lists are errors."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("must not be an empty list")
        return tuple(value)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return (value,)
    return value  # let the item type report the wrong type


def _one_of_schema(item: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]})


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_PATTERN_LENGTH:
        raise ValueError(f"is longer than {MAX_PATTERN_LENGTH} characters")
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def _name_glob(value: str) -> str:
    _text(value)
    if "/" in value or "\\" in value:
        raise ValueError(f"{value!r} looks like a path; names are matched without directories, use `path`")
    _glob_compiles(value, casefold=True)
    return value


def _path_glob(value: str) -> str:
    _text(value)
    if not (value.startswith(("/", "*", "?", "[", "\\\\")) or _DRIVE_RE.match(value)):
        raise ValueError(f"{value!r} is not an absolute path (or a pattern starting with a wildcard)")
    _glob_compiles(value, casefold=False)
    return value


def _glob_compiles(value: str, *, casefold: bool) -> None:
    try:
        regex = compile_glob(value, casefold=casefold)
    except re.error as exc:
        raise ValueError(f"invalid glob {value!r}: {exc}") from None
    if "(?!)" in regex.pattern:  # how fnmatch renders a range that matches nothing, e.g. [z-a]
        raise ValueError(f"invalid glob {value!r}: a character range is empty (reversed?)")


def _regex(value: str) -> str:
    _text(value)
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regex {value!r}: {exc}") from None
    return value


def _sha256(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a SHA-256 (64 hex digits)")
    return value.lower()


def _port(value: Any) -> PortRange:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a port (1-65535) or a range 'low-high', got {type(value).__name__}")
    if isinstance(value, int):
        low = high = value
    else:
        m = _PORT_RE.fullmatch(value)
        if not m:
            raise ValueError(f"{value!r} is not a port or a range 'low-high'")
        low = int(m.group(1))
        high = int(m.group(2) or low)
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 1-65535")
    if low > high:
        raise ValueError(f"range {value!r} is reversed (low > high)")
    return PortRange(low, high)


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address or CIDR as a string, got {type(value).__name__}")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(value.strip(), strict=False)
            raise ValueError(f"{value!r} has host bits set (did you mean {loose}?)") from None
        raise ValueError(f"{value!r} is not an IP address or CIDR") from None


def _domain(value: str) -> str:
    _text(value)
    return normalize_pattern(value)


def _http_url(value: str) -> str:
    if not _URL_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def _rule_id(value: str) -> str:
    if not _RULE_ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid rule id (1-128 of A-Z a-z 0-9 _ . : -)")
    return value


def _false_is_off(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as the boolean false.
    return "off" if value is False else value


def _strict(check: Callable[[str], str]) -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__} {value!r} (quote it)")
        return check(value)

    return validate


def _as_lower_list(value: Any) -> Any:
    value = _as_list(value)
    return tuple(v.lower() if isinstance(v, str) else v for v in value) if isinstance(value, tuple) else value


_STR: dict[str, Any] = {"type": "string", "minLength": 1}
_REGEX: dict[str, Any] = {**_STR, "format": "regex"}
_SHA: dict[str, Any] = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
_NET: dict[str, Any] = {"type": "string", "description": "IPv4/IPv6 address or CIDR"}
_PORT: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": r"^\s*\d{1,5}\s*(-\s*\d{1,5}\s*)?$"},
    ]
}

Text = Annotated[str, PlainValidator(_strict(_text)), WithJsonSchema(_STR)]
NameGlob = Annotated[str, PlainValidator(_strict(_name_glob)), WithJsonSchema(_STR)]
PathGlob = Annotated[str, PlainValidator(_strict(_path_glob)), WithJsonSchema(_STR)]
Regex = Annotated[str, PlainValidator(_strict(_regex)), WithJsonSchema(_REGEX)]
Sha256 = Annotated[str, PlainValidator(_strict(_sha256)), WithJsonSchema(_SHA)]
HttpUrl = Annotated[
    str, PlainValidator(_strict(_http_url)), WithJsonSchema({"type": "string", "format": "uri"})
]
RuleId = Annotated[
    str, PlainValidator(_strict(_rule_id)), WithJsonSchema({"type": "string", "pattern": RULE_ID_PATTERN})
]
Domain = Annotated[
    str,
    PlainValidator(_strict(_domain)),
    WithJsonSchema({"type": "string", "minLength": 1, "description": "name or *.suffix"}),
]
Port = Annotated[PortRange, PlainValidator(_port), PlainSerializer(str), WithJsonSchema(_PORT)]
Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    PlainValidator(_network),
    PlainSerializer(str),
    WithJsonSchema(_NET),
]

# Condition values: one value or a non-empty list (any of them matches).
NameGlobs = Annotated[tuple[NameGlob, ...], BeforeValidator(_as_list), _one_of_schema(_STR)]
PathGlobs = Annotated[tuple[PathGlob, ...], BeforeValidator(_as_list), _one_of_schema(_STR)]
Regexes = Annotated[tuple[Regex, ...], BeforeValidator(_as_list), _one_of_schema(_REGEX)]
Sha256s = Annotated[tuple[Sha256, ...], BeforeValidator(_as_list), _one_of_schema(_SHA)]
Texts = Annotated[tuple[Text, ...], BeforeValidator(_as_list), _one_of_schema(_STR)]
Ports = Annotated[tuple[Port, ...], BeforeValidator(_as_list), _one_of_schema(_PORT)]
Networks = Annotated[tuple[Network, ...], BeforeValidator(_as_list), _one_of_schema(_NET)]
Domains = Annotated[
    tuple[Domain, ...],
    BeforeValidator(_as_list),
    _one_of_schema({"type": "string", "minLength": 1, "description": "name or *.suffix"}),
]
