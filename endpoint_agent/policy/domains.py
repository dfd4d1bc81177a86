"""Domain names in the policy: normalising, validating, and matching exact names and `*.` suffixes.

One normal form everywhere (the policy, DNS queries, connection annotations): lower case,
no trailing dot, IDNA (punycode, UTS #46 mapping) for non-ASCII labels. `*.example.com`
matches every name under example.com (`a.example.com`, `a.b.example.com`), not
`example.com` itself; a policy lists both to catch both.

Lookups cost one dict probe per label of the name, whatever the number of patterns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_NAME_LENGTH = 253
WILDCARD_PREFIX = "*."
# DNS allows more than hostnames do (underscores in SRV/DMARC names), so ASCII labels are
# checked leniently; non-ASCII labels go through IDNA.
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def normalize_name(name: str) -> str:
    """The normal form of a DNS name; ValueError with a short sentence when it is not one."""
    text = name.strip().rstrip(".")
    if not text:
        raise ValueError("is empty")
    if text.isascii():
        text = text.lower()
    else:
        import idna  # only for non-ASCII names; its tables are not worth loading otherwise

        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"{name!r} is not a valid internationalised domain name: {exc}") from None
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"{name!r} is longer than {MAX_NAME_LENGTH} characters")
    for label in text.split("."):
        if not _ASCII_LABEL.fullmatch(label):
            raise ValueError(f"{name!r} has an invalid label {label!r}")
    return text


def normalize_pattern(pattern: str) -> str:
    """`name` or `*.name`, normalised; any other wildcard is an error."""
    text = pattern.strip()
    wildcard = text.startswith(WILDCARD_PREFIX)
    rest = text[len(WILDCARD_PREFIX) :] if wildcard else text
    if "*" in rest:
        raise ValueError(f"{pattern!r}: only a leading '*.' wildcard is allowed (e.g. '*.example.com')")
    if wildcard and "." not in rest.strip("."):
        raise ValueError(f"{pattern!r} would match a whole top-level domain; name at least two labels")
    return (WILDCARD_PREFIX if wildcard else "") + normalize_name(rest)


def query_name(name: str) -> str | None:
    """A name from the wire (or a map), in normal form; None when it is not a usable name."""
    try:
        return normalize_name(name)
    except ValueError:
        return None


def suffixes(name: str) -> Iterable[str]:
    """Proper parent names of `name`, nearest first: a.b.c -> b.c, c."""
    start = name.find(".")
    while start != -1:
        yield name[start + 1 :]
        start = name.find(".", start + 1)


@dataclass
class DomainSet:
    """Any of some normalised patterns; `first_match` says which one matched."""

    _exact: dict[str, str] = field(default_factory=dict)
    _under: dict[str, str] = field(default_factory=dict)  # "example.com" for "*.example.com"

    @classmethod
    def of(cls, patterns: Iterable[str]) -> DomainSet:
        out = cls()
        for pattern in patterns:
            out.add(pattern)
        return out

    def add(self, pattern: str) -> None:
        if pattern.startswith(WILDCARD_PREFIX):
            self._under.setdefault(pattern[len(WILDCARD_PREFIX) :], pattern)
        else:
            self._exact.setdefault(pattern, pattern)

    def __len__(self) -> int:
        return len(self._exact) + len(self._under)

    def first_match(self, name: str) -> str | None:
        """The pattern matching `name` (already normalised), or None."""
        hit = self._exact.get(name)
        if hit is not None:
            return hit
        if self._under:
            for parent in suffixes(name):
                hit = self._under.get(parent)
                if hit is not None:
                    return hit
        return None


@dataclass
class DomainIndex:
    """Normalised patterns -> rule keys; candidates for a name in one probe per label."""

    _exact: dict[str, set[int]] = field(default_factory=dict)
    _under: dict[str, set[int]] = field(default_factory=dict)

    def add(self, pattern: str, key: int) -> None:
        if pattern.startswith(WILDCARD_PREFIX):
            self._under.setdefault(pattern[len(WILDCARD_PREFIX) :], set()).add(key)
        else:
            self._exact.setdefault(pattern, set()).add(key)

    @property
    def empty(self) -> bool:
        return not self._exact and not self._under

    def freeze(self) -> None:
        """Nothing to precompute; present so every index of the compiler has the same shape."""

    def candidates(self, name: str, out: set[int]) -> None:
        hit = self._exact.get(name)
        if hit:
            out.update(hit)
        if self._under:
            for parent in suffixes(name):
                hit = self._under.get(parent)
                if hit:
                    out.update(hit)


__all__ = [
    "MAX_NAME_LENGTH",
    "DomainIndex",
    "DomainSet",
    "normalize_name",
    "normalize_pattern",
    "query_name",
    "suffixes",
]
