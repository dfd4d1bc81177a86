"""An uploaded batch (`{"events": [...]}`), decoded once: each event validated, with its JSON text.

The server stores the text an event was validated from (no re-encoding), so the one pass is:

    rule out NUL and lone surrogates on the text (what no field type bounds)
    -> split the body into the events' texts (msgspec: the JSON checked, each event left as text)
    -> validate the events as JSON, strictly (a JSON string is a string, a number a number), all
       in one call of a validator DERIVED from the model's own schema (`Derived`): the same
       schema less its Python validators, whose checks are then run on the models it built
    -> should that fail, each text on its own with the model itself (and coercion, below)

An event that is valid only after coercion (a number sent as a string, a time as a number) is
stored as the model writes it (`to_json`), so what is stored always has the contract's types.
Anything unusual (not a batch, escapes that may hide a NUL or a surrogate, invalid UTF-8, an
invalid event) goes the general way: the whole body decoded with `json.loads` and validated as
Python, which names the failing field exactly as FastAPI's request validation does.

    parse_batch(b'{"events": [...]}') -> [Received(event=Violation(...), text='{"kind":...}'), ...]
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

from endpoint_contract.bounds import check_time, json_problem
from endpoint_contract.events import (
    OMIT_WHEN_NONE,
    TEXT_CHECKED,
    VIOLATION_KEYS,
    AgentEvent,
    Event,
    EventBatch,
    Violation,
)

# In JSON text a NUL or a surrogate can only be written as an escape (raw ones are not valid).
_SUSPECT = (b"\\u0000", b"\\ud", b"\\uD")
_STRICT = {TEXT_CHECKED: True}
_EVENT: TypeAdapter[Violation | AgentEvent] = TypeAdapter(Event)


class _Split(msgspec.Struct, forbid_unknown_fields=True):
    """The body's layout: each event left as its JSON text (msgspec checks the JSON, C speed)."""

    events: list[msgspec.Raw]


_SPLIT = msgspec.json.Decoder(_Split)
_OMITTED_WHEN_NONE = frozenset((*OMIT_WHEN_NONE, "connection"))


@dataclass(slots=True)
class Received:
    """One validated event and the JSON object text it is stored as. (Not frozen: one is built
    per uploaded event, and a frozen dataclass takes twice as long to build.)"""

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


class Derived:
    """The events' validator without its Python validators, which cost a Python call per event (the
    model's) and per time (check_time) -- about half of validating an event. Built from the model's
    own core schema (endpoint_contract/events.py), never written by hand: the list-of-events schema
    with the model validator (`_Event._bounded`) and the fields' check_time validators taken out;
    `validate` runs their checks after (`check_untyped`, check_time: checks that change nothing, so
    running them after is the same) and returns None when one fails or anything does not validate
    strictly (the caller then validates with the model itself, which names the error).
    Derived.of() is None when the schema holds a Python validator not known here."""

    def __init__(self, validator: SchemaValidator, times: dict[type, tuple[str, ...]]) -> None:
        self._validator = validator
        self._times = times  # by model class: the fields whose check_time was taken out

    @classmethod
    def of(cls, adapter: TypeAdapter[Any]) -> Derived | None:
        schema = copy.deepcopy(adapter.core_schema)
        if schema.get("type") != "list" or schema["items_schema"].get("type") != "tagged-union":
            return None
        bounded = Violation.__pydantic_decorators__.model_validators["_bounded"].func
        times: dict[type, tuple[str, ...]] = {}
        choices = schema["items_schema"]["choices"]
        for tag, choice in choices.items():
            if choice.get("type") != "function-after" or choice["function"]["function"] is not bounded:
                return None
            model = choice["schema"]
            if model.get("type") != "model" or model["schema"].get("type") != "model-fields":
                return None
            checked = []
            for name, field in model["schema"]["fields"].items():
                holder, inner = field, field["schema"]
                while inner.get("type") in ("default", "nullable"):
                    holder, inner = inner, inner["schema"]
                if inner.get("type") == "function-after" and inner["function"].get("function") is check_time:
                    holder["schema"] = inner["schema"]
                    checked.append(name)
            choices[tag] = model  # without the model validator (and its ref, named once)
            times[model["cls"]] = tuple(checked)
        if _has_function(schema):
            return None
        return cls(SchemaValidator(schema), times)

    def validate(self, pieces: list[msgspec.Raw]) -> list[Violation | AgentEvent] | None:
        """The events of these texts, or None: the caller validates them with the model."""
        try:
            events = self._validator.validate_json(b"[" + b",".join(pieces) + b"]", strict=True)
        except ValidationError:
            return None
        times = self._times
        try:
            for event in events:
                for name in times[type(event)]:
                    value = getattr(event, name)
                    if value is not None:
                        check_time(value)
                event.check_untyped()
        except ValueError:
            return None
        return cast(list[Violation | AgentEvent], events)


def _has_function(node: Any) -> bool:
    """Whether a core schema still calls Python anywhere (a validator or serializer function)."""
    if isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str) and (kind.startswith("function") or kind in ("with-info", "no-info")):
            return True
        return any(_has_function(v) for k, v in node.items() if k != "metadata")
    if isinstance(node, list | tuple):
        return any(_has_function(v) for v in node)
    return False


_DERIVED = Derived.of(TypeAdapter(list[Event]))


def _fast(body: bytes) -> list[Received] | None:
    """The batch's events, or None for the general way."""
    if b"\\u" in body and any(s in body for s in _SUSPECT):  # one scan when nothing is escaped
        return None
    try:
        pieces = _SPLIT.decode(body).events
    except (msgspec.DecodeError, RecursionError):  # not JSON, not {"events": [...]}, too deep
        return None
    events = _DERIVED.validate(pieces) if _DERIVED is not None and pieces else None
    if events is not None:
        received: list[Received] = []
        for event, piece in zip(events, pieces, strict=True):
            try:
                text = str(piece, "utf-8")
            except UnicodeDecodeError:
                return None
            received.append(Received(event, _as_stored(event, text)))
        return received
    out: list[Received] = []
    for piece in pieces:
        try:
            event_text = str(piece, "utf-8")
        except UnicodeDecodeError:
            return None
        try:
            event = _EVENT.validate_json(event_text, strict=True, context=_STRICT)
        except ValidationError:
            try:  # valid after coercion: stored as the model writes it, in the contract's types
                obj = json.loads(event_text)
                if not isinstance(obj, dict):
                    return None
                event = _EVENT.validate_python(obj, context=_STRICT)
            except (ValueError, RecursionError):  # ValidationError is a ValueError
                return None  # invalid: the general way names the field
            event_text = event.to_json_text()
        else:
            event_text = _as_stored(event, event_text)
        out.append(Received(event, event_text))
    return out


def _as_stored(event: Violation | AgentEvent, text: str) -> str:
    """`text` when it has exactly the keys `to_json` writes (an agent's text has), else to_json's text:
    what readers get has every contract key, whoever uploaded it."""
    given = event.model_fields_set
    # A key given as None was written `null`: a text without one has none (the common case).
    nulls = "null" in text
    if isinstance(event, Violation):
        if not given >= VIOLATION_KEYS or (
            nulls
            and not given.isdisjoint(_OMITTED_WHEN_NONE)
            and any(getattr(event, k) is None for k in given & _OMITTED_WHEN_NONE)
        ):
            return event.to_json_text()
        conn = event.connection
        if nulls and conn is not None and conn.domain is None and "domain" in conn.model_fields_set:
            return event.to_json_text()
        return text
    if "detail" not in given or (nulls and "count" in given and event.count is None):
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
