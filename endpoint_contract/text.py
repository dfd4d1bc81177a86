"""Text from the machine made safe to store and send, without losing a byte.

Linux names, paths and command lines are bytes. Python reads the ones that are not valid UTF-8
with `surrogateescape` (the byte 0xff becomes the lone surrogate U+DCFF), which no JSON encoder,
database or HTTP server accepts. `escape_text` replaces such a string by backslash escapes at the
collection boundary, so nothing downstream sees a surrogate:

    escape_text("bad\\udcff")  == "bad\\\\xff"      (the 4 characters \\xff)
    unescape_bytes("bad\\\\xff") == b"bad\\xff"

Valid text is returned unchanged (the common case costs one scan of the string). In an escaped
string, backslashes are doubled as well, so `unescape_bytes` gives back the exact original bytes.

`clip_text` bounds a long value (a command line) to a number of UTF-8 bytes, cut with a marker
that says how much was dropped.
"""

from __future__ import annotations

import re

CUT_MARKER = "…[cut {n} bytes]"


def needs_escape(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escape_text(text: str) -> str:
    """`text` when it is valid Unicode; else its bytes with backslash escapes (`\\xNN`, `\\\\`)."""
    if not needs_escape(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = b"".join(_char_bytes(ch) for ch in text)
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def escape_optional(text: str | None) -> str | None:
    return None if text is None else escape_text(text)


def _char_bytes(ch: str) -> bytes:
    """One character's bytes: an escaped byte (U+DC80..U+DCFF) as that byte, another lone
    surrogate (only ever seen in JSON, never from the OS) as its 3 UTF-8-style bytes."""
    if "\udc80" <= ch <= "\udcff":
        return bytes([ord(ch) - 0xDC00])
    return ch.encode("utf-8", "surrogatepass")


_ESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def unescape_bytes(text: str) -> bytes:
    """The original bytes of a string `escape_text` escaped (the inverse, for forensics)."""

    def one(m: re.Match[bytes]) -> bytes:
        token = m.group(1)
        return b"\\" if token == b"\\" else bytes([int(token[1:], 16)])

    return _ESCAPE.sub(one, text.encode("utf-8"))


def clip_text(text: str, max_bytes: int) -> str:
    """`text` if its UTF-8 fits in `max_bytes`, else its head and a marker with the bytes cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    keep = max(0, max_bytes - len(CUT_MARKER.format(n=len(data))) - 2)
    head = data[:keep].decode("utf-8", "ignore")  # never end inside a character
    return head + CUT_MARKER.format(n=len(data) - len(head.encode("utf-8", "surrogatepass")))


__all__ = ["CUT_MARKER", "clip_text", "escape_optional", "escape_text", "needs_escape", "unescape_bytes"]
