r"""Required literal text of globs and regexes: what lets the engine index patterns.

A pattern can only match a string that contains its required literal text. This module
describes it as *requirements*: a list of clauses, each a list of needles, meaning "every
clause holds; a clause holds when the string contains one of its needles" (compared in
lower case). `*-{vendor}-helper` requires [["-"+vendor+"-helper"]]; `(alpha|beta)\d+`
requires [["alpha", "beta"]]. The compiled policy indexes a pattern by n-grams of the
needles of one clause (the rarest), so for one input string the engine looks up the
n-grams the string contains instead of trying every pattern.

The extraction must be *sound*: every string the pattern matches satisfies every clause.
When nothing is certain it returns no clause, and the pattern is checked against every
input (a "residual").
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Sequence
from typing import Any

# `re`'s private parser is stable across 3.11-3.13; any surprise falls back to "no needles".
try:
    _sre_c: Any = importlib.import_module("re._constants")
    _sre_parse: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - a future Python without the private modules
    _sre_c = _sre_parse = None

MIN_NEEDLE = 3  # shorter literal text is too common to index by

# With re.IGNORECASE these non-ASCII characters match ASCII letters (checked exhaustively in
# the tests); folding them before lower-casing keeps the n-gram prefilter sound.
_RE_CASE_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def fold_for_regex(text: str) -> str:
    """The form of an input string that regex needles are compared with."""
    return text.translate(_RE_CASE_FOLD).lower()


def glob_is_literal(pattern: str) -> bool:
    """True when the fnmatch pattern has no wildcard, so it only matches itself."""
    return not _glob_scan(pattern)[1]


Requirements = list[list[str]]  # AND of clauses; a clause is an OR of needles


def glob_requirements(pattern: str) -> Requirements:
    """Every literal run (at least MIN_NEEDLE long, lower case) of the glob: all are required."""
    runs, _ = _glob_scan(pattern)
    return [[run.lower()] for run in runs if len(run) >= MIN_NEEDLE]


def _glob_scan(pattern: str) -> tuple[list[str], bool]:
    """Split an fnmatch pattern into its literal runs (mirrors fnmatch.translate)."""
    runs: list[str] = []
    cur: list[str] = []
    has_meta = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c in "*?":
            has_meta = True
            runs.append("".join(cur))
            cur = []
            i += 1
            continue
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: fnmatch treats '[' as a literal
                cur.append(c)
                i += 1
                continue
            has_meta = True
            runs.append("".join(cur))
            cur = []
            i = j + 1
            continue
        cur.append(c)
        i += 1
    runs.append("".join(cur))
    return [r for r in runs if r], has_meta


def regex_requirements(pattern: str) -> Requirements:
    """Clauses (needles lower case, ASCII) that every re.search match satisfies; [] if unknown."""
    if _sre_parse is None:
        return []
    try:
        clauses = _clauses(list(_sre_parse.parse(pattern)))
    except Exception:  # the private parser changed shape: stay sound, index nothing
        return []
    return [[needle.lower() for needle in clause] for clause in clauses]


def _clauses(items: Sequence[tuple[Any, Any]]) -> Requirements:
    """What a sequence of regex nodes requires: its literal runs and its required groups."""
    c = _sre_c
    out: Requirements = []
    run: list[str] = []

    def flush() -> None:
        if len(run) >= MIN_NEEDLE:
            out.append(["".join(run)])
        run.clear()

    for op, av in items:
        if op is c.LITERAL and av < 128:
            run.append(chr(av))
            continue
        if op is c.AT:  # zero-width anchor (\b, ^, $): the run stays contiguous
            continue
        flush()
        if op is c.SUBPATTERN:
            out.extend(_clauses(list(av[-1])))
        elif op is c.ATOMIC_GROUP:
            out.extend(_clauses(list(av)))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            out.extend(_clauses(list(av[2])))
        elif op is c.BRANCH:
            # One alternative must match: the union of one clause per alternative is required.
            alternatives = [_clauses(list(alt)) for alt in av[1]]
            if all(alternatives):
                out.append([n for alt in alternatives for n in max(alt, key=_selectivity)])
        # anything else (classes, ANY, optional parts, lookarounds) requires nothing certain
    flush()
    return out


def _selectivity(clause: list[str]) -> tuple[int, int]:
    # A longer shortest needle is rarer; fewer needles mean fewer index entries.
    return (min(len(n) for n in clause), -len(clause))


def grams(text: str, size: int) -> set[str]:
    """Every `size`-long substring of text."""
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def compile_glob(pattern: str, *, casefold: bool) -> re.Pattern[str]:
    """fnmatch semantics (`*` also crosses '/'); case folding by lower-casing both sides."""
    return re.compile(fnmatch.translate(pattern.lower() if casefold else pattern))
