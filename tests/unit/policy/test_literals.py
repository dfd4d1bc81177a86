"""The n-gram prefilter must be sound: a pattern that matches a string is always a candidate."""

from __future__ import annotations

import random
import re
import sys

import pytest

from endpoint_agent.policy.literals import (
    compile_glob,
    fold_for_regex,
    glob_is_literal,
    glob_requirements,
    regex_requirements,
)


@pytest.mark.parametrize(
    ("pattern", "literal", "requirements"),
    [
        ("qbittorrent", True, [["qbittorrent"]]),
        ("qbittorrent*", False, [["qbittorrent"]]),
        ("*-Miner", False, [["-miner"]]),
        ("ab*cdef?gh", False, [["cdef"]]),
        ("/home/*/.local/bin/Acme*", False, [["/home/"], ["/.local/bin/acme"]]),
        ("[abc]xyz*", False, [["xyz"]]),
        ("[!]]tool", False, [["tool"]]),
        ("[unclosed", True, [["[unclosed"]]),
        ("*", False, []),
        ("a?b", False, []),
    ],
)
def test_glob_requirements(pattern: str, literal: bool, requirements: list[list[str]]) -> None:
    assert glob_is_literal(pattern) is literal
    assert glob_requirements(pattern) == requirements


@pytest.mark.parametrize(
    ("pattern", "requirements"),
    [
        (r"--seed\b", [["--seed"]]),
        (r"\borg\.gudy\.azureus2\.", [["org.gudy.azureus2."]]),
        (r"(?i)SEED", [["seed"]]),
        (r"foo(alpha|beta)qux", [["foo"], ["alpha", "beta"], ["qux"]]),
        (r"foo(bar|baz)qux", [["foo"], ["qux"]]),  # re factors out "ba": nothing 3 long is left
        (r"(alpha|beta)\d+", [["alpha", "beta"]]),  # either branch must occur
        (r"(alpha|b)", []),  # one branch has no usable literal
        (r"x?abcd+", [["abc"]]),  # a repeat's body counts only when it occurs at least once
        (r"(?:xyz){2,}", [["xyz"]]),
        (r"(?:xyz)*", []),
        (r"\w+", []),
        (r"ab", []),
        ("caf\u00e9s", [["caf"]]),  # non-ASCII characters cut a run
        (r"(?x) abc  def ", [["abcdef"]]),
        (r"--listen-port[= ](6881|6889|51413)\b", [["--listen-port"], ["6881", "6889", "51413"]]),
    ],
)
def test_regex_requirements(pattern: str, requirements: list[list[str]]) -> None:
    assert regex_requirements(pattern) == requirements


def test_case_fold_table_is_complete() -> None:
    """Every non-ASCII character that re.IGNORECASE matches to an ASCII letter folds to it."""
    ascii_letter = re.compile("[a-z]", re.IGNORECASE)
    for code in range(128, sys.maxunicode + 1):
        char = chr(code)
        if ascii_letter.fullmatch(char):
            assert fold_for_regex(char).isascii(), f"U+{code:04X} is not folded"


def _random_text(rnd: random.Random, vocabulary: list[str], n: int) -> str:
    return "".join(rnd.choice(vocabulary) for _ in range(n))


def test_regex_needles_are_sound_on_random_inputs() -> None:
    rnd = random.Random(7)
    # Text made of the patterns' own pieces matches often; the odd characters are the ones
    # re.IGNORECASE equates with ASCII letters (long s, dotless i, Kelvin sign).
    vocabulary = ["abc", "ABC", "aBc", "cab", "bc", "a", "b", "c", "-", ".", " ", "s", "k", "i"]
    vocabulary += ["\u017f", "\u0131", "\u0130", "\u212a", "x"]
    pieces = [
        "abc",
        "ABC",
        "a.c",
        "b+",
        "(abc|bca)",
        "(?:cab)?",
        "[ab]",
        r"\b",
        "-",
        "(?i)",
        "ski",
        "x*",
        "(?:abk)+",
    ]
    checked = 0
    for _ in range(3000):
        parts = [rnd.choice(pieces) for _ in range(rnd.randint(1, 5))]
        if "(?i)" in parts:  # a global flag must lead the pattern
            parts = ["(?i)", *[p for p in parts if p != "(?i)"]]
        pattern = "".join(parts)
        try:
            regex = re.compile(pattern)
        except re.error:
            continue
        requirements = regex_requirements(pattern)
        if not requirements:
            continue
        for _ in range(20):
            text = _random_text(rnd, vocabulary, rnd.randint(0, 6))
            if regex.search(text):
                checked += 1
                folded = fold_for_regex(text)
                for clause in requirements:
                    assert any(n in folded for n in clause), (pattern, text, requirements)
    assert checked > 500, checked


def test_glob_needles_are_sound_on_random_inputs() -> None:
    rnd = random.Random(11)
    pieces = ["abc", "ABC", "*", "?", "[ab]", "[!c]", "xyz", "-"]
    checked = 0
    for _ in range(3000):
        pattern = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 5)))
        requirements = glob_requirements(pattern)
        regex = compile_glob(pattern, casefold=True)
        for _ in range(20):
            text = _random_text(
                rnd, ["abc", "ABC", "xyz", "-", "a", "b", "c", "z"], rnd.randint(0, 6)
            ).lower()
            if regex.match(text) and requirements:
                checked += 1
                for clause in requirements:
                    assert any(n in text for n in clause), (pattern, text, requirements)
    assert checked > 500, checked


def test_compile_glob_case_folding_and_slashes() -> None:
    assert compile_glob("QBit*", casefold=True).match("qbittorrent")
    assert not compile_glob("/opt/QB/*", casefold=False).match("/opt/qb/x")
    assert compile_glob("/opt/*", casefold=False).match("/opt/a/b/c")
