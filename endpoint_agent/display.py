"""One escaping function for everything a person reads: log lines, tables, notifications.

Process names, command lines, paths and user names are chosen by whoever runs the process. Shown
as they are, a newline forges a log line, an ESC sequence rewrites the terminal of the admin
reading `endpoint-agent violations`, a right-to-left override turns `gpj.exe` into `exe.jpg`.
`printable()` shows every such character as a visible escape (`\\n`, `\\x1b`, `\\u202e`; bytes that
were not valid UTF-8, kept as surrogates, as `\\udcff`) and leaves everything else alone.

Display only: stored and uploaded records keep their own (JSON) encoding.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: object) -> str:
    """`value` as text safe to print on one line of a terminal, a log or a desktop notification."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text  # the common case: nothing to do
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


__all__ = ["printable"]
