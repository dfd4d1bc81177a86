"""Opaque, stable cursors: the receive id of the last event returned, or the sort key of the last host."""

from __future__ import annotations

import base64
import binascii
import json

from endpoint_contract.bounds import text_problem
from server_stub.errors import BadRequest

_PREFIX = "e1:"


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor this server issued") from None
    digits = text[len(_PREFIX) :]
    if not text.startswith(_PREFIX) or not digits.isdigit() or len(digits) > 18:
        raise BadRequest("cursor: not a cursor this server issued")
    return int(digits)


_HOST_PREFIX = "h1:"


def encode_host_cursor(hostname: str, host_id: str) -> str:
    """The (hostname, host_id) of the last host of a page: where the next page starts."""
    text = json.dumps([hostname, host_id], ensure_ascii=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(f"{_HOST_PREFIX}{text}".encode()).decode().rstrip("=")


def decode_host_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    refused = BadRequest("cursor: not a host cursor this server issued")
    if len(cursor) > 4096:
        raise refused
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        key = json.loads(text.removeprefix(_HOST_PREFIX)) if text.startswith(_HOST_PREFIX) else None
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise refused from None
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise refused
    if any(text_problem(k) for k in key):  # no NUL or lone surrogate reaches the database
        raise refused
    return key[0], key[1]
