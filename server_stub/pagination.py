"""Opaque, stable cursors: the receive id of the last item returned."""

from __future__ import annotations

import base64
import binascii

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
