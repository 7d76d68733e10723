"""BigQuery tables for task rows: the table schema derived from a task's Arrow schema, and each row checked
against it and made ready for a load file. The task's Arrow schema is the single source of truth, so Parquet
files and BigQuery tables get the same columns; every table also gets a ``run_date`` DATE partition column."""

from __future__ import annotations

import base64
import datetime
import decimal
import math
from typing import Any

import pyarrow as pa

from common.records import DeadLetter
from common.text import preview

RUN_DATE_FIELD = "run_date"

# Dead-letter rows, as the errors table stores them (run_date is added like in every table).
ERRORS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


def _scalar_type(arrow_type: pa.DataType, name: str) -> str:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "STRING"
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    if pa.types.is_integer(arrow_type):
        if arrow_type == pa.uint64():
            raise ValueError(f"column {name!r}: uint64 does not fit BigQuery's INT64; declare it int64")
        return "INT64"
    if pa.types.is_floating(arrow_type):
        return "FLOAT64"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "BYTES"
    if pa.types.is_date(arrow_type):
        return "DATE"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP" if arrow_type.tz else "DATETIME"
    if pa.types.is_decimal(arrow_type):
        return "NUMERIC" if arrow_type.precision <= 38 and arrow_type.scale <= 9 else "BIGNUMERIC"
    raise ValueError(f"column {name!r}: Arrow type {arrow_type} has no BigQuery equivalent in this mapping")


def bq_field(field: pa.Field) -> dict[str, Any]:
    """One Arrow field as a BigQuery field: lists become REPEATED, maps REPEATED RECORD(key, value)."""
    arrow_type = field.type
    mode = "NULLABLE" if field.nullable else "REQUIRED"
    if pa.types.is_map(arrow_type):
        entry = [
            bq_field(pa.field("key", arrow_type.key_type, nullable=False)),
            bq_field(arrow_type.item_field.with_name("value")),
        ]
        return {"name": field.name, "type": "RECORD", "mode": "REPEATED", "fields": entry}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        item = arrow_type.value_field
        if pa.types.is_list(item.type) or pa.types.is_large_list(item.type) or pa.types.is_map(item.type):
            raise ValueError(f"column {field.name!r}: BigQuery has no list of lists; wrap the inner list")
        inner = bq_field(item.with_name(field.name))
        return {**inner, "mode": "REPEATED"}
    if pa.types.is_struct(arrow_type):
        nested = [bq_field(arrow_type.field(i)) for i in range(arrow_type.num_fields)]
        return {"name": field.name, "type": "RECORD", "mode": mode, "fields": nested}
    return {"name": field.name, "type": _scalar_type(arrow_type, field.name), "mode": mode}


def table_schema(arrow_schema: pa.Schema) -> dict[str, Any]:
    """The BigQuery table schema for a task's rows: its Arrow columns plus the ``run_date`` partition column."""
    if RUN_DATE_FIELD in arrow_schema.names:
        raise ValueError(f"the task schema must not declare {RUN_DATE_FIELD!r}: the sink adds it")
    fields = [bq_field(field) for field in arrow_schema]
    fields.append({"name": RUN_DATE_FIELD, "type": "DATE", "mode": "REQUIRED"})
    return {"fields": fields}


def partitioning() -> dict[str, Any]:
    """Extra table settings for Beam's sink: daily partitions on the run_date column."""
    return {"timePartitioning": {"type": "DAY", "field": RUN_DATE_FIELD}}


# --- rows -------------------------------------------------------------------------------------------------


def _bad(path: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"column {path!r}: expected {expected}, got {type(value).__name__} {preview(repr(value), 80)}")


def _convert(value: Any, arrow_type: pa.DataType, path: str) -> Any:
    """A Python value checked against an Arrow type and made JSON-ready for a BigQuery load file."""
    if pa.types.is_map(arrow_type):
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise _bad(path, "a mapping", value)
        entries = []
        for entry in items:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise _bad(path, "(key, value) pairs", entry)
            key, item = entry
            entries.append(
                {
                    "key": _convert(key, arrow_type.key_type, f"{path}.key"),
                    "value": _nullable(item, arrow_type.item_field, f"{path}.value"),
                }
            )
        return entries
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        if not isinstance(value, (list, tuple)):
            raise _bad(path, "a list", value)
        item_type = arrow_type.value_type
        if any(item is None for item in value):
            raise ValueError(f"column {path!r}: BigQuery REPEATED columns cannot hold nulls")
        return [_convert(item, item_type, f"{path}[]") for item in value]
    if pa.types.is_struct(arrow_type):
        if not isinstance(value, dict):
            raise _bad(path, "a record (dict)", value)
        return _convert_record(value, list(arrow_type), path + ".")
    return _convert_scalar(value, arrow_type, path)


def _convert_scalar(value: Any, arrow_type: pa.DataType, path: str) -> Any:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        if not isinstance(value, str):
            raise _bad(path, "a string", value)
        return value
    if pa.types.is_boolean(arrow_type):
        if not isinstance(value, bool):
            raise _bad(path, "a boolean", value)
        return value
    if pa.types.is_integer(arrow_type):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, "an integer", value)
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"column {path!r}: {value} is outside INT64")
        return value
    if pa.types.is_floating(arrow_type):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, "a number", value)
        if not math.isfinite(value):
            raise ValueError(f"column {path!r}: {value} is not finite; BigQuery load files cannot carry it")
        return float(value)
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        if not isinstance(value, (bytes, bytearray)):
            raise _bad(path, "bytes", value)
        return base64.b64encode(bytes(value)).decode("ascii")
    if pa.types.is_date(arrow_type):
        if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
            raise _bad(path, "a date", value)
        return value.isoformat()
    if pa.types.is_timestamp(arrow_type):
        if not isinstance(value, datetime.datetime):
            raise _bad(path, "a datetime", value)
        return value.isoformat()
    if pa.types.is_decimal(arrow_type):
        if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
            raise _bad(path, "a Decimal", value)
        return str(value)
    raise _bad(path, str(arrow_type), value)


def _nullable(value: Any, field: pa.Field, path: str) -> Any:
    if value is None:
        if not field.nullable:
            raise ValueError(f"column {path!r} is REQUIRED but the row has no value")
        return None
    return _convert(value, field.type, path)


def _convert_record(row: dict[str, Any], fields: list[pa.Field], prefix: str = "") -> dict[str, Any]:
    known = {field.name for field in fields}
    unknown = sorted(set(row) - known)
    if unknown:
        raise ValueError(f"columns {[prefix + name for name in unknown]} are not in the task schema")
    return {field.name: _nullable(row.get(field.name), field, prefix + field.name) for field in fields}


def to_bq_row(row: dict[str, Any], arrow_schema: pa.Schema, run_date: datetime.date) -> dict[str, Any]:
    """Validate a task row against its Arrow schema and return the row as the BigQuery table stores it.

    Raises ValueError naming the column that breaks the schema; the caller turns it into a dead letter.
    """
    if not isinstance(row, dict):
        raise ValueError(f"expected a row dict, got {type(row).__name__}")
    converted = _convert_record(row, list(arrow_schema))
    converted[RUN_DATE_FIELD] = run_date.isoformat()
    return converted


def dead_letter_row(letter: DeadLetter, run_id: str, run_date: datetime.date) -> dict[str, Any]:
    """A dead letter as a row of the errors table."""
    row = {**letter.to_dict(), "run_id": run_id}
    row["input"] = row["input"] if isinstance(row["input"], str) else str(row["input"])
    return to_bq_row(row, ERRORS_SCHEMA, run_date)
