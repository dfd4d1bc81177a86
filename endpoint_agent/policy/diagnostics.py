"""Pydantic errors as one line each: file, rule (by id, or index), field, problem.

policies/p.yaml: rule 'p2p-x' (rules[3]) field process.cmdline[0]: invalid regex '(': ...
policies/p.yaml: rules[5] (no id) field action: is required
policies/p.yaml: field version: must be >= 1 (got 0)
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from endpoint_agent.policy.model import Policy, duplicate_rule_ids

_MAX_INPUT_REPR = 60


def validation_problems(source: str, exc: ValidationError, raw: Any) -> list[str]:
    """Every problem in `exc`, plus duplicate ids (which pydantic only checks when all else is valid)."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        if err["type"] == "duplicate_rule_id":
            continue  # reported below, per rule
        lines.append(_describe(source, err, raw))
    rules = raw.get("rules") if isinstance(raw, dict) else None
    if isinstance(rules, list):
        ids = [rule.get("id") if isinstance(rule, dict) else None for rule in rules]
        for index, message in duplicate_rule_ids(ids):
            lines.append(f"{source}: {_where(raw, ('rules', index))} field id: {message}")
    return lines or [f"{source}: invalid policy"]


def _describe(source: str, err: ErrorDetails, raw: Any) -> str:
    loc = tuple(err["loc"])
    where = _where(raw, loc)
    field_loc = loc[2:] if where.startswith(("rule ", "rules[")) else loc
    field = _dotted(field_loc)
    message = _message(err, loc)
    head = " ".join(part for part in (where, f"field {field}" if field else "") if part)
    return f"{source}: {head}: {message}" if head else f"{source}: {message}"


def _where(raw: Any, loc: Sequence[Any]) -> str:
    """'rule 'id' (rules[3])' for errors inside a rule, '' otherwise."""
    if len(loc) < 2 or loc[0] != "rules" or not isinstance(loc[1], int):
        return ""
    index = loc[1]
    rules = raw.get("rules") if isinstance(raw, dict) else None
    rule = rules[index] if isinstance(rules, list) and index < len(rules) else None
    rule_id = rule.get("id") if isinstance(rule, dict) else None
    if isinstance(rule_id, str) and rule_id:
        return f"rule {rule_id!r} (rules[{index}])"
    return f"rules[{index}] (no id)"


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: ErrorDetails, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = "unknown field"
        if hint:
            text += f" (did you mean {hint[0]!r}?)"
        if allowed:
            text += f"; allowed: {', '.join(allowed)}"
        return text
    if kind == "missing":
        return "is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, got {_type_name(value)}"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    if kind in (
        "greater_than_equal",
        "less_than_equal",
        "int_type",
        "int_parsing",
        "bool_type",
        "enum",
        "string_type",
        "tuple_type",
        "list_type",
        "int_from_float",
        "bool_parsing",
    ):
        return f"{msg[0].lower()}{msg[1:]} (got {_short(value)})"
    return msg[0].lower() + msg[1:]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_INPUT_REPR else text[: _MAX_INPUT_REPR - 3] + "..."


def _type_name(value: Any) -> str:
    return {
        dict: "mapping",
        list: "list",
        str: "string",
        int: "integer",
        bool: "boolean",
        float: "number",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


def _allowed_fields(loc: Sequence[Any]) -> list[str]:
    model: type[BaseModel] | None = Policy
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part)
        model = _model_in(info.annotation) if info else None
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
