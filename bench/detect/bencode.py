"""Bencoding (BEP 3), just enough for a tracker's answers and for reading a .torrent's info dictionary."""

from __future__ import annotations

import hashlib

Value = int | bytes | list["Value"] | dict[bytes, "Value"]


class BencodeError(ValueError):
    pass


def encode(value: Value | str) -> bytes:
    if isinstance(value, bool):
        raise BencodeError("booleans have no bencoding")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(encode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(encode(k) + encode(value[k]) for k in sorted(value)) + b"e"
    raise BencodeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Value:
    value, end = _decode_at(data, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def _decode_at(data: bytes, i: int) -> tuple[Value, int]:
    if i >= len(data):
        raise BencodeError("truncated input")
    head = data[i : i + 1]
    if head == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if head == b"l":
        items: list[Value] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode_at(data, i)
            items.append(item)
        return items, i + 1
    if head == b"d":
        out: dict[bytes, Value] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode_at(data, i)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string")
            out[key], i = _decode_at(data, i)
        return out, i + 1
    if head.isdigit():
        colon = data.index(b":", i)
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise BencodeError("truncated string")
        return data[start : start + length], start + length
    raise BencodeError(f"unexpected byte {head!r} at offset {i}")


def info_hash(torrent: bytes) -> bytes:
    """SHA-1 of the bencoded `info` dictionary: the swarm's identity."""
    meta = decode(torrent)
    if not isinstance(meta, dict) or b"info" not in meta:
        raise BencodeError("not a torrent: no info dictionary")
    return hashlib.sha1(encode(meta[b"info"])).digest()
