"""The ``output_schema`` of a Converse pipeline: a JSON Schema of a flat object whose
properties become typed prediction columns, and the check of an answer against it.

Only the keywords listed here are accepted in the schema: a constraint the scorer would not
check (``pattern``, ``format``, nested objects) is refused at start-up rather than trusted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cdc_scorer.core.models import ColumnKind, PredictionColumn
from cdc_scorer.core.own_tables import PREDICTION_METADATA
from cdc_scorer.core.spec import sql_identifier

_TOP_KEYWORDS = {"type", "properties", "required", "additionalProperties", "description", "title"}
_PROPERTY_KEYWORDS = {
    "type",
    "description",
    "title",
    "enum",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
}
_TYPES: dict[str, ColumnKind] = {
    "string": "text",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
}
# A string property kept as VARCHAR(maxLength) up to this length, as TEXT beyond it.
MAX_LABEL_LENGTH = 1024
# The predictions table's own columns: a property cannot be named like one.
RESERVED = {"key_hash", *PREDICTION_METADATA, "scored_at"}


def schema_problems(schema: Mapping[str, Any]) -> list[str]:
    """What is wrong with an ``output_schema`` (nothing: it can be used)."""
    problems = [
        f"output_schema.{k}: not a keyword cdc-scorer checks — remove it"
        for k in schema
        if k not in _TOP_KEYWORDS and k != "$schema"
    ]
    if schema.get("type") != "object":
        problems.append('output_schema.type: must be "object" (each property is a column)')
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return [*problems, "output_schema.properties: name at least one property"]
    for name, prop in properties.items():
        where = f"output_schema.properties.{name}"
        if not sql_identifier(str(name)) or name in RESERVED:
            problems.append(f"{where}: {name!r} cannot be a column name — rename the property")
            continue
        if not isinstance(prop, Mapping):
            problems.append(f"{where}: must be a table (a JSON Schema)")
            continue
        problems += [
            f"{where}.{k}: not a keyword cdc-scorer checks — remove it"
            for k in prop
            if k not in _PROPERTY_KEYWORDS
        ]
        kind, _ = _type_of(prop)
        if kind not in _TYPES:
            problems.append(
                f"{where}.type: {prop.get('type')!r} — use string, number, integer or boolean "
                '(optionally with "null")'
            )
            continue
        enum = prop.get("enum")
        if enum is not None and (
            not isinstance(enum, list) or not enum or not all(_is(kind, v) for v in enum)
        ):
            problems.append(f"{where}.enum: must list values of type {kind}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(r in properties for r in required):
        problems.append("output_schema.required: must list names of properties")
    return problems


def _type_of(prop: Mapping[str, Any]) -> tuple[str, bool]:
    """(the JSON type, whether null is allowed)."""
    kind = prop.get("type")
    if isinstance(kind, list):
        others = [k for k in kind if k != "null"]
        return (str(others[0]) if len(others) == 1 else "?"), "null" in kind
    return str(kind), False


def columns(schema: Mapping[str, Any]) -> tuple[PredictionColumn, ...]:
    """One prediction column per property, in the schema's order."""
    out = []
    for name, prop in schema["properties"].items():
        json_type, _ = _type_of(prop)
        kind = _TYPES[json_type]
        length = 0
        if json_type == "string":
            if prop.get("enum"):
                kind, length = "label", max(len(v) for v in prop["enum"])
            elif int(prop.get("maxLength", MAX_LABEL_LENGTH + 1)) <= MAX_LABEL_LENGTH:
                kind, length = "label", int(prop["maxLength"])
        out.append(PredictionColumn(str(name), kind, length))
    return tuple(out)


def _is(json_type: str, value: Any) -> bool:
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if json_type == "integer":
        return isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())
    return math.isfinite(value)


def violations(schema: Mapping[str, Any], answer: Any) -> list[str]:
    """How an answer breaks the schema (nothing: it holds)."""
    if not isinstance(answer, Mapping):
        return [f"the answer is {type(answer).__name__}, not an object"]
    properties: Mapping[str, Any] = schema["properties"]
    found = [f"{r}: required, missing" for r in schema.get("required", []) if r not in answer]
    if schema.get("additionalProperties") is False:
        found += [f"{k}: not a property of the schema" for k in answer if k not in properties]
    for name, prop in properties.items():
        if name not in answer:
            continue
        value = answer[name]
        json_type, nullable = _type_of(prop)
        if value is None:
            if not nullable:
                found.append(f"{name}: null, not {json_type}")
            continue
        if not _is(json_type, value):
            found.append(f"{name}: {value!r} is not {json_type}")
            continue
        if "enum" in prop and value not in prop["enum"]:
            found.append(f"{name}: {value!r} is not one of {prop['enum']}")
        if json_type == "string":
            if len(value) > prop.get("maxLength", math.inf):
                found.append(f"{name}: longer than maxLength {prop['maxLength']}")
            if len(value) < prop.get("minLength", 0):
                found.append(f"{name}: shorter than minLength {prop['minLength']}")
        elif value < prop.get("minimum", -math.inf) or value > prop.get("maximum", math.inf):
            found.append(f"{name}: {value!r} is outside [minimum, maximum]")
    return found


def column_values(schema: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """The prediction columns of an answer that holds (integers as ints)."""
    out: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        value = answer.get(name)
        if value is not None and _type_of(prop)[0] == "integer":
            value = int(value)
        out[str(name)] = value
    return out
