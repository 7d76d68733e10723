"""The JSON schemas an extract task accepts, and what they become: the grammar's schema, Arrow columns, checked
values.

The subset is the one that maps onto table columns: an object whose properties are strings, numbers, integers,
booleans, enums of strings, arrays of these (or of objects), and nested objects; ``required``, ``maxLength`` /
``minLength``, ``maxItems`` / ``minItems``, ``description`` and ``title``; nullable as ``type: [x, "null"]``.
Anything else (``pattern``, ``format``, ``anyOf``, ``$ref``, ...) is refused by name, so a schema never means
more than the columns can hold. Objects are closed (no properties beyond those declared).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

SCALARS = {"string": pa.string(), "number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}
TYPES = (*SCALARS, "array", "object")
# Integers the grammar lets the model write: inside INT64 (llguidance cannot build the full INT64 range).
INTEGER_BOUND = 10**18
PROPERTY = re.compile(r"^[a-z][a-z0-9_]{0,59}$")  # a column (or struct field) name every sink accepts
ANY_KEYS = {"type", "description", "title"}
KEYS_BY_TYPE = {
    "string": ANY_KEYS | {"maxLength", "minLength", "enum"},
    "number": ANY_KEYS,
    "integer": ANY_KEYS,
    "boolean": ANY_KEYS,
    "array": ANY_KEYS | {"items", "maxItems", "minItems"},
    "object": ANY_KEYS | {"properties", "required", "additionalProperties"},
}


class SchemaError(ValueError):
    """A schema outside the supported subset; the message names where in the schema and what to write."""


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _type_of(node: Mapping[str, Any], at: str) -> tuple[str, bool]:
    """(the node's type, whether null is allowed): ``{"enum": [...]}`` is a string; ``[x, "null"]`` nullable."""
    declared = node.get("type", "string" if "enum" in node else None)
    nullable = False
    if isinstance(declared, list):
        kinds = [t for t in declared if t != "null"]
        if len(kinds) != 1 or len(declared) != 2 or "null" not in declared:
            raise SchemaError(f'{at}: type {declared!r}: a list type must be one type and "null", e.g. [number, null]')
        declared, nullable = kinds[0], True
    if declared not in TYPES:
        raise SchemaError(f"{at}: type {declared!r} is not supported; use one of {', '.join(TYPES)}")
    enum = node.get("enum")
    if enum is not None:
        if declared != "string" or not isinstance(enum, list):
            raise SchemaError(f"{at}: enum must list strings (the values a string may take)")
        values = [v for v in enum if v is not None]
        if not values or not all(isinstance(v, str) for v in values) or len(set(values)) != len(values):
            raise SchemaError(f"{at}: enum must list distinct strings, got {enum!r}")
        nullable = nullable or None in enum
    return declared, nullable


def normalize(schema: Any, at: str = "schema") -> dict[str, Any]:
    """Check a schema against the supported subset and return the schema the grammar is built from: every
    object closed, a nullable enum listing null. SchemaError names the keyword and where it is."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{at}: expected a mapping (a JSON schema object), got {type(schema).__name__}")
    if "type" not in schema and "enum" not in schema:
        others = sorted(set(schema) - ANY_KEYS)
        what = f"keyword {others[0]!r} is not supported" if others else "no type"
        raise SchemaError(f"{at}: {what}; write a type ({', '.join(TYPES)}) or an enum")
    kind, nullable = _type_of(schema, at)
    unknown = sorted(set(schema) - KEYS_BY_TYPE[kind])
    if unknown:
        raise SchemaError(
            f"{at}: keyword {unknown[0]!r} is not supported for type {kind}; the supported keywords are "
            f"{', '.join(sorted(KEYS_BY_TYPE[kind]))}"
        )
    out: dict[str, Any] = {k: schema[k] for k in ("type", "description", "title") if k in schema}
    for key in ("maxLength", "minLength", "maxItems", "minItems"):
        if key in schema:
            if not _count(schema[key]):
                raise SchemaError(f"{at}: {key} must be a whole number >= 0, got {schema[key]!r}")
            out[key] = schema[key]
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if out.get(low, 0) > out.get(high, out.get(low, 0)):
            raise SchemaError(f"{at}: {low} {out[low]} is above {high} {out[high]}; no value could match")
    if "enum" in schema:
        out["enum"] = [v for v in schema["enum"] if v is not None] + ([None] if nullable else [])
    if kind == "array":
        if "items" not in schema:
            raise SchemaError(f"{at}: an array needs items, e.g. items: {{type: string}}")
        items = normalize(schema["items"], f"{at}.items")
        if items["_kind"] == "array" or items["_nullable"]:
            raise SchemaError(f"{at}.items: arrays of arrays or of nulls have no table column; wrap them in an object")
        out["items"] = items
    if kind == "object":
        out.update(_object(schema, at))
    return {**out, "_kind": kind, "_nullable": nullable}


def _object(schema: Mapping[str, Any], at: str) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        raise SchemaError(f"{at}: an object needs properties, e.g. properties: {{product: {{type: string}}}}")
    if schema.get("additionalProperties", False) is not False:
        raise SchemaError(f"{at}: additionalProperties may only be false (every property becomes a column)")
    checked = {}
    for name, sub in properties.items():
        if not isinstance(name, str) or not PROPERTY.match(name):
            raise SchemaError(
                f"{at}: property {name!r}: names are lower case letters, digits and _ (they name columns)"
            )
        checked[name] = normalize(sub, f"{at}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{at}: required must list property names")
    missing = [r for r in required if r not in checked]
    if missing:
        raise SchemaError(f"{at}: required names {missing[0]!r}, which is not a property")
    return {"properties": checked, "required": list(required), "additionalProperties": False}


def grammar_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    """A normalized schema as plain JSON schema (the internal marks dropped, integers bounded to fit INT64)."""
    out: dict[str, Any] = {}
    if node.get("_kind") == "integer":
        out.update(minimum=-INTEGER_BOUND, maximum=INTEGER_BOUND)
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key == "properties":
            value = {name: grammar_schema(sub) for name, sub in value.items()}
        elif key == "items":
            value = grammar_schema(value)
        out[key] = value
    return out


def schema_json(node: Mapping[str, Any]) -> str:
    """The grammar's schema as JSON text (property order kept: the model writes them in that order)."""
    return json.dumps(grammar_schema(node), ensure_ascii=False)


# --- columns ---------------------------------------------------------------------------------------------------


def arrow_type(node: Mapping[str, Any]) -> pa.DataType:
    """string/enum -> string, number -> float64, integer -> int64, boolean -> bool, array -> list, object -> struct."""
    kind = node["_kind"]
    if kind == "array":
        return pa.list_(pa.field("item", arrow_type(node["items"]), nullable=False))
    if kind == "object":
        return pa.struct(arrow_fields(node))
    return SCALARS[kind]


def arrow_fields(node: Mapping[str, Any]) -> list[pa.Field]:
    """An object's properties as Arrow fields, in order; nullable unless required and not null-typed."""
    required = set(node["required"])
    return [
        pa.field(name, arrow_type(sub), nullable=sub["_nullable"] or name not in required)
        for name, sub in node["properties"].items()
    ]


# --- values ----------------------------------------------------------------------------------------------------


def check_value(value: Any, node: Mapping[str, Any], at: str = "$") -> Any:
    """A parsed JSON value checked against a normalized schema and shaped for its column: an object gets every
    declared property (absent ones None), a number becomes a float. ValueError names where it breaks."""
    if value is None:
        if node["_nullable"]:
            return None
        raise ValueError(f"{at}: null where a {node['_kind']} is required")
    kind = node["_kind"]
    if kind == "object":
        return _check_object(value, node, at)
    if kind == "array":
        if not isinstance(value, list):
            raise ValueError(f"{at}: expected an array, got {type(value).__name__}")
        if len(value) > node.get("maxItems", len(value)) or len(value) < node.get("minItems", 0):
            raise ValueError(f"{at}: {len(value)} items, outside minItems/maxItems")
        return [check_value(item, node["items"], f"{at}[{i}]") for i, item in enumerate(value)]
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{at}: expected a string, got {type(value).__name__}")
        if "enum" in node and value not in node["enum"]:
            raise ValueError(f"{at}: {value!r} is not one of {[v for v in node['enum'] if v is not None]}")
        if len(value) > node.get("maxLength", len(value)) or len(value) < node.get("minLength", 0):
            raise ValueError(f"{at}: {len(value)} characters, outside minLength/maxLength")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{at}: expected true or false, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{at}: expected a number, got {type(value).__name__}")
    if kind == "integer":
        if not isinstance(value, int) or not -(2**63) <= value < 2**63:
            raise ValueError(f"{at}: expected an integer within INT64, got {value!r}")
        return value
    if not math.isfinite(value):
        raise ValueError(f"{at}: {value!r} is not a finite number")
    return float(value)


def _check_object(value: Any, node: Mapping[str, Any], at: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{at}: expected an object, got {type(value).__name__}")
    extra = sorted(set(value) - set(node["properties"]))
    if extra:
        raise ValueError(f"{at}: property {extra[0]!r} is not in the schema")
    missing = [name for name in node["required"] if name not in value]
    if missing:
        raise ValueError(f"{at}: required property {missing[0]!r} is missing")
    return {
        name: check_value(value[name], sub, f"{at}.{name}") if name in value else None
        for name, sub in node["properties"].items()
    }
