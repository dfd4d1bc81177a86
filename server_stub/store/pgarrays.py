"""Columns of values for PostgreSQL, each sent as one binary array built in one pass.

An upload's rows go to the database as one array per column (store/bulk.py). psycopg's list
dumper calls a Python dumper for every element (~0.3 us each: eleven columns of a 500-event
upload cost the server ~1.7 ms); here a column is the bytes of array_recv's format, joined from
each value's encoding (remembered per distinct value where values repeat), and the dumper only
hands them over.

    params = {"ids": texts(["a", "b", None]), "at": times([datetime.now(UTC)]), "n": ints([1, 2])}
    cursor.execute("SELECT * FROM unnest(%(ids)b::text[], %(at)b::timestamptz[])", params)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from psycopg import adapters, pq
from psycopg.adapt import Dumper

# The header of a one-dimensional array: dimensions, has nulls, element type, length, lower bound.
_HEAD = struct.Struct("!iiIii")
_EMPTY = struct.Struct("!iiI")  # no dimensions: an empty array
_NULL = b"\xff\xff\xff\xff"
_TIME = struct.Struct("!iq")  # length 8, microseconds since 2000-01-01 UTC
_INT = struct.Struct("!iq")  # length 8, the value
_FLOAT = struct.Struct("!id")
_TEXT_OID, _TEXT_ARRAY_OID = 25, 1009
_TIMESTAMPTZ_OID, _TIMESTAMPTZ_ARRAY_OID = 1184, 1185
_INT8_OID, _INT8_ARRAY_OID = 20, 1016
_FLOAT8_OID, _FLOAT8_ARRAY_OID = 701, 1022
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Column:
    """A column's values, encoded (texts, times)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class TextColumn(Column):
    """Sent as text[]."""


class TimeColumn(Column):
    """Sent as timestamptz[]."""


class IntColumn(Column):
    """Sent as bigint[]."""


class FloatColumn(Column):
    """Sent as double precision[]."""


def _array(parts: list[bytes], n: int, hasnull: bool, oid: int) -> bytes:
    if n == 0:
        return _EMPTY.pack(0, 0, oid)
    parts[0] = _HEAD.pack(1, hasnull, oid, n, 1)
    return b"".join(parts)


def texts(values: Iterable[str | None], *, distinct: bool = False) -> TextColumn:
    """Text values (None: NULL). `distinct`: the values mostly differ (ids, documents), so each
    one's encoding is not remembered for the next."""
    parts: list[bytes] = [b""]  # the header's place
    hasnull = False
    if distinct:
        n = 0
        for value in values:
            n += 1
            if value is None:
                parts.append(_NULL)
                hasnull = True
                continue
            encoded = value.encode()
            parts.append(len(encoded).to_bytes(4, "big"))
            parts.append(encoded)
        return TextColumn(_array(parts, n, hasnull, _TEXT_OID))
    known: dict[str | None, bytes] = {}
    for value in values:
        chunk = known.get(value)
        if chunk is None:
            if value is None:
                chunk = _NULL
                hasnull = True
            else:
                encoded = value.encode()
                chunk = len(encoded).to_bytes(4, "big") + encoded
            known[value] = chunk
        parts.append(chunk)
    return TextColumn(_array(parts, len(parts) - 1, hasnull, _TEXT_OID))


def times(values: Iterable[datetime | None]) -> TimeColumn:
    """Timezone-aware times (None: NULL), stored as the instant they name."""
    parts: list[bytes] = [b""]
    hasnull = False
    pack = _TIME.pack
    for value in values:
        if value is None:
            parts.append(_NULL)
            hasnull = True
        elif value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        else:
            parts.append(pack(8, (value - _PG_EPOCH) // _MICROSECOND))
    return TimeColumn(_array(parts, len(parts) - 1, hasnull, _TIMESTAMPTZ_OID))


def ints(values: Iterable[int]) -> IntColumn:
    """64-bit integers."""
    parts: list[bytes] = [b""]
    parts += [_INT.pack(8, value) for value in values]
    return IntColumn(_array(parts, len(parts) - 1, False, _INT8_OID))


def floats(values: Iterable[float]) -> FloatColumn:
    """Double precision numbers."""
    parts: list[bytes] = [b""]
    parts += [_FLOAT.pack(8, value) for value in values]
    return FloatColumn(_array(parts, len(parts) - 1, False, _FLOAT8_OID))


class _ColumnDumper(Dumper):
    format = pq.Format.BINARY

    def dump(self, obj: Column) -> bytes:
        return obj.data


class _TextsDumper(_ColumnDumper):
    oid = _TEXT_ARRAY_OID


class _TimesDumper(_ColumnDumper):
    oid = _TIMESTAMPTZ_ARRAY_OID


class _IntsDumper(_ColumnDumper):
    oid = _INT8_ARRAY_OID


class _FloatsDumper(_ColumnDumper):
    oid = _FLOAT8_ARRAY_OID


# Connections made from now on know them (the store's engine connects after its modules are imported).
for _column, _dumper in (
    (TextColumn, _TextsDumper),
    (TimeColumn, _TimesDumper),
    (IntColumn, _IntsDumper),
    (FloatColumn, _FloatsDumper),
):
    adapters.register_dumper(_column, _dumper)
