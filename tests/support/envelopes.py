"""Ways to damage a signed policy envelope, for the tests that check it is refused."""

from __future__ import annotations

import base64
import json


def flip_payload_byte(envelope: bytes) -> bytes:
    """The same envelope with one byte of the signed payload flipped (the signature no longer matches)."""
    outer = json.loads(envelope)
    payload = bytearray(base64.b64decode(outer["payload"]))
    payload[len(payload) // 2] ^= 0x01
    outer["payload"] = base64.b64encode(bytes(payload)).decode()
    return json.dumps(outer).encode()


def strip_signatures(envelope: bytes) -> bytes:
    outer = json.loads(envelope)
    outer["signatures"] = []
    return json.dumps(outer).encode()
