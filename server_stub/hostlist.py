"""The host list's JSON (GET /hosts), written straight from the rows the store lists.

The bytes are exactly what `HostList.model_dump_json()` (server_stub/models.py) writes for the
same hosts -- a test holds the two together -- but without a datetime, a dict and a model per
host: a page of a thousand hosts cost more in those than in reading it. A row this cannot
write the plain way (a time not in the stored form, counters that are not names and whole
numbers) goes through the model, so anything unusual comes out as the model has it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from server_stub.models import HostOut
from server_stub.store.hosts import UTC_TEXT_FORMAT, ListedHost

# What the store's utc_text gives: 'YYYY-MM-DD HH:MM:SS.ffffff' (26 characters).
_TEXT_LEN = 26
_NO_FRACTION = ".000000"


def _stored(text: str) -> bool:
    return len(text) == _TEXT_LEN and text[10] == " " and text[19] == "." and text[4] == "-"


_dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_text = json.encoder.encode_basestring  # as _dump writes a string


def _str(text: str | None) -> str:
    return "null" if text is None else _encode_text(text)


def _time(text: str | None) -> str:
    """pydantic's form of a UTC time: ISO 8601 with 'Z', the fraction only when not zero."""
    if text is None:
        return "null"
    fraction = text[19:]
    return f'"{text[:10]}T{text[11:19]}{"" if fraction == _NO_FRACTION else fraction}Z"'


def _parsed(text: str | None) -> datetime | None:
    # Naive means UTC, as coltypes.UTCDateTime reads it.
    if text is None:
        return None
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# Counters as json.dumps stores them, names without escapes and whole numbers: made compact as
# they are (no backslash: every quote delimits a name, so ': ' and ', "' occur only between members).
_PLAIN_COUNTERS = re.compile(r'\{(?:"[^"\\\x00-\x1f]*": ?-?\d+(?:, ?"[^"\\\x00-\x1f]*": ?-?\d+)*)?\}')


def _counters(text: str | None) -> str | None:
    """The counters' JSON as the model writes them, or None when only the model can say."""
    if text is not None and _PLAIN_COUNTERS.fullmatch(text):
        return text.replace('": ', '":').replace(', "', ',"')
    value = json.loads(text) if text is not None else None
    if value is None:
        return "{}"  # as the store reads a host's unset counters (store/hosts.py _record)
    if type(value) is dict and all(type(v) is int for v in value.values()):
        return _dump(value)
    return None


def _by_model(h: ListedHost, stale: bool) -> dict[str, Any]:
    item = {
        "host_id": h.host_id,
        "hostname": h.hostname,
        "machine_id": h.machine_id,
        "enrolled_at": _parsed(h.enrolled_at),
        "last_seen": _parsed(h.last_seen),
        "stale": stale,
        "agent_version": h.agent_version,
        "policy_version": h.policy_version,
        "mode": h.mode,
        "last_scan_at": _parsed(h.last_scan_at),
        "heartbeat_at": _parsed(h.heartbeat_at),
        "counters": dict((json.loads(h.counters) if h.counters is not None else None) or {}),
        "circuit_state": h.circuit_state,
    }
    return HostOut.model_validate(item).model_dump(mode="json")


def host_list_json(rows: list[ListedHost], next_cursor: str | None, silent_before: datetime) -> str:
    """HostList's JSON of these hosts; a host is stale when never seen or last seen before
    `silent_before` (the stale filter's condition)."""
    cutoff = silent_before.astimezone(UTC).strftime(UTC_TEXT_FORMAT)
    items = []
    for h in rows:
        host_id, hostname, machine_id, enrolled, seen, version, policy, mode, scan, beat, counted, circuit = h
        compact = _counters(counted)
        if compact is None or not all(t is None or _stored(t) for t in (enrolled, seen, scan, beat)):
            parsed = _parsed(seen)
            items.append(_dump(_by_model(h, parsed is None or parsed < silent_before)))
            continue
        items.append(
            f'{{"host_id":{_str(host_id)},"hostname":{_str(hostname)},"machine_id":{_str(machine_id)},'
            f'"enrolled_at":{_time(enrolled)},"last_seen":{_time(seen)},'
            f'"stale":{"true" if seen is None or seen < cutoff else "false"},'
            f'"agent_version":{_str(version)},"policy_version":{"null" if policy is None else int(policy)},'
            f'"mode":{_str(mode)},"last_scan_at":{_time(scan)},"heartbeat_at":{_time(beat)},'
            f'"counters":{compact},"circuit_state":{_str(circuit)}}}'
        )
    return f'{{"items":[{",".join(items)}],"next_cursor":{_str(next_cursor)}}}'
