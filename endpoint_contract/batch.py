"""An uploaded batch (`{"events": [...]}`), decoded once: each event validated, with its JSON text.

The server stores the text an event was validated from (no re-encoding), so the one pass is:

    split the body into the events' texts (the C JSON scanner, `raw_decode`)
    -> rule out NUL and lone surrogates on the text (what no field type bounds)
    -> validate each text as JSON, strictly (a JSON string is a string, a number a number)

An event that is valid only after coercion (a number sent as a string, a time as a number) is
stored as the model writes it (`to_json`), so what is stored always has the contract's types.
Anything unusual (another layout of the body, escapes that may hide a NUL or a surrogate, an
invalid event) goes the general way: the whole body decoded with `json.loads` and validated as
Python, which names the failing field exactly as FastAPI's request validation does.

    parse_batch(b'{"events": [...]}') -> [Received(event=Violation(...), text='{"kind":...}'), ...]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from endpoint_contract.bounds import json_problem
from endpoint_contract.events import (
    OMIT_WHEN_NONE,
    TEXT_CHECKED,
    VIOLATION_KEYS,
    AgentEvent,
    Event,
    EventBatch,
    Violation,
)

_WS = " \t\n\r"  # JSON's whitespace (str.strip and regex \s take more)
_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"events"[ \t\n\r]*:[ \t\n\r]*\[[ \t\n\r]*')
_COMMA = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")
# In JSON text a NUL or a surrogate can only be written as an escape (raw ones are not valid).
_SUSPECT = ("\\u0000", "\\ud", "\\uD")
_STRICT = {TEXT_CHECKED: True}
_EVENT: TypeAdapter[Violation | AgentEvent] = TypeAdapter(Event)
_DECODER = json.JSONDecoder()
_OMITTED_WHEN_NONE = frozenset((*OMIT_WHEN_NONE, "connection"))


@dataclass(frozen=True, slots=True)
class Received:
    """One validated event and the JSON object text it is stored as."""

    event: Violation | AgentEvent
    text: str


class BatchInvalid(ValueError):
    """The body is not a valid batch; `errors` as pydantic gives them, located from "body"."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation errors")
        self.errors = errors


class BatchUnreadable(ValueError):
    """The body cannot be decoded at all (nested deeper than the JSON parser goes, not UTF-8)."""


def parse_batch(body: bytes) -> list[Received]:
    """The events of an upload body, each validated once; raises BatchInvalid or BatchUnreadable."""
    fast = _fast(body)
    return fast if fast is not None else _general(body)


def _fast(body: bytes) -> list[Received] | None:
    """The batch as agents send it, or None for the general way."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(s in text for s in _SUSPECT):
        return None
    head, end = _HEAD.match(text), _list_end(text)
    if head is None or end is None:
        return None
    pos = head.end()
    out: list[Received] = []
    while pos < end:
        try:
            obj, stop = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        event_text = text[pos:stop]
        try:
            event = _EVENT.validate_json(event_text, strict=True, context=_STRICT)
        except ValidationError:
            try:  # valid after coercion: stored as the model writes it, in the contract's types
                event = _EVENT.validate_python(obj, context=_STRICT)
            except ValidationError:
                return None  # invalid: the general way names the field
            event_text = event.to_json_text()
        else:
            event_text = _as_stored(event, event_text)
        out.append(Received(event, event_text))
        comma = _COMMA.match(text, stop)
        if comma is not None and comma.end() < end:
            pos = comma.end()
        elif stop == end:
            pos = end
        else:
            return None
    return out


def _list_end(text: str) -> int | None:
    """Where the whitespace before the closing `]}` starts (a regex search would try every offset)."""
    body = text.rstrip(_WS)
    if not body.endswith("}"):
        return None
    body = body[:-1].rstrip(_WS)
    if not body.endswith("]"):
        return None
    return len(body[:-1].rstrip(_WS))


def _as_stored(event: Violation | AgentEvent, text: str) -> str:
    """`text` when it has exactly the keys `to_json` writes (an agent's text has), else to_json's text:
    what readers get has every contract key, whoever uploaded it."""
    given = event.model_fields_set
    if isinstance(event, Violation):
        if not given >= VIOLATION_KEYS or (
            not given.isdisjoint(_OMITTED_WHEN_NONE)
            and any(getattr(event, k) is None for k in given & _OMITTED_WHEN_NONE)
        ):
            return event.to_json_text()
        conn = event.connection
        if conn is not None and conn.domain is None and "domain" in conn.model_fields_set:
            return event.to_json_text()
        return text
    if "detail" not in given or ("count" in given and event.count is None):
        return event.to_json_text()
    return text


def _general(body: bytes) -> list[Received]:
    """Any body: decoded whole, validated as Python (FastAPI's way, with its error locations)."""
    if not body:
        raise BatchInvalid([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        decoded = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BatchInvalid(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    except (ValueError, RecursionError) as exc:
        raise BatchUnreadable("there was an error parsing the body") from exc
    if isinstance(decoded, dict) and isinstance(decoded.get("events"), list):
        # Bounds first, as text: pydantic refuses a key it cannot encode before any check runs.
        problems = [
            {
                "type": "value_error",
                "loc": ("body", "events", i),
                "msg": f"Value error, {problem}",
                "input": {},
            }
            for i, ev in enumerate(decoded["events"])
            if (problem := json_problem(ev)) is not None
        ]
        if problems:
            raise BatchInvalid(problems)
    try:
        batch = EventBatch.model_validate(decoded)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise BatchInvalid(errors) from None
    return [Received(ev, ev.to_json_text()) for ev in batch.events]


__all__ = ["BatchInvalid", "BatchUnreadable", "Received", "parse_batch"]
