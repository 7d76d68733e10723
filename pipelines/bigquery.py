"""BigQuery output: the table schema derived from a task's Arrow schema, one partition per run date.

The task's Arrow schema is the single source of truth: Parquet files and BigQuery tables get the same columns.
Each table is partitioned by a ``run_date`` DATE column. A run writes with FILE_LOADS to the partition decorator
``table$YYYYMMDD`` and WRITE_TRUNCATE, so a rerun of the same date replaces that partition and leaves every
other date alone (streaming inserts cannot do this: Beam's WRITE_TRUNCATE there deletes the whole table).
Dead letters go to the sibling ``<table>_errors`` table, partitioned the same way. Rows are validated against
the schema before the sink, so a bad row becomes a dead letter instead of failing the whole load job.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import re
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery

from common.records import ERRORS_TAG, DeadLetter
from common.text import preview

RUN_DATE_FIELD = "run_date"
ERRORS_SUFFIX = "_errors"
STAGE = "bigquery"

# "PROJECT:DATASET.TABLE" (Beam's form) or "PROJECT.DATASET.TABLE" (BigQuery's SQL form).
_TABLE_SPEC = re.compile(
    r"^(?P<project>[a-z][-a-z0-9]{4,28}[a-z0-9])[:.](?P<dataset>\w{1,1024})\.(?P<table>[-\w]{1,1024})$"
)

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


@dataclass(frozen=True)
class TableRef:
    """A BigQuery table; ``partition(run_date)`` names the run's partition for Beam's sink."""

    project: str
    dataset: str
    table: str

    @classmethod
    def parse(cls, spec: str) -> TableRef:
        match = _TABLE_SPEC.match(spec.strip())
        if not match or "$" in spec:
            raise ValueError(
                f"--output_table {spec!r} is not PROJECT:DATASET.TABLE (e.g. my-project:reviews.sentiment); "
                "leave out any $partition decorator, the run date picks the partition"
            )
        return cls(match["project"], match["dataset"], match["table"])

    @property
    def spec(self) -> str:
        return f"{self.project}:{self.dataset}.{self.table}"

    def errors_table(self) -> TableRef:
        return TableRef(self.project, self.dataset, self.table + ERRORS_SUFFIX)

    def partition(self, run_date: datetime.date) -> str:
        return f"{self.spec}${run_date:%Y%m%d}"


# --- schema -----------------------------------------------------------------------------------------------


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


# --- transforms -------------------------------------------------------------------------------------------


class _ValidateRows(beam.DoFn):
    def __init__(self, arrow_schema: pa.Schema, run_date: datetime.date) -> None:
        self._schema = arrow_schema
        self._run_date = run_date

    def process(self, row: dict[str, Any]):
        try:
            yield to_bq_row(row, self._schema, self._run_date)
        except ValueError as err:
            row_id = row.get("id") if isinstance(row, dict) else None
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG,
                DeadLetter(
                    str(row_id) if row_id is not None else None,
                    STAGE,
                    f"row does not fit the BigQuery schema: {err}",
                    preview(repr(row)),
                ),
            )


def partition_sink(
    table: TableRef, schema: dict[str, Any], run_date: datetime.date, temp_location: str | None
) -> WriteToBigQuery:
    """Beam's sink configured to replace one date partition of ``table`` (created when missing)."""
    return WriteToBigQuery(
        table.partition(run_date),
        schema=schema,
        method=WriteToBigQuery.Method.FILE_LOADS,
        create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition=BigQueryDisposition.WRITE_TRUNCATE,
        additional_bq_parameters=partitioning(),
        custom_gcs_temp_location=temp_location,
    )


def clear_partition(partition: str) -> None:
    """Delete one date partition, ``project:dataset.table$YYYYMMDD``, through the client Beam's own sink
    uses (same credentials and endpoint); a table that does not exist yet is fine."""
    from apache_beam.io.gcp.bigquery_tools import BigQueryWrapper

    project, rest = partition.split(":", 1)
    dataset, table_id = rest.split(".", 1)
    BigQueryWrapper()._delete_table(project, dataset, table_id)


class ClearPartitionIfEmpty(beam.PTransform):
    """When a run has no rows for a table, delete the run's partition of it.

    Beam issues no load job for an empty PCollection, so WRITE_TRUNCATE alone would leave an earlier run's
    rows for that date in place (e.g. yesterday's dead letters after a clean rerun).
    """

    def __init__(self, table: TableRef, run_date: datetime.date) -> None:
        super().__init__()
        self._table = table
        self._run_date = run_date

    def expand(self, rows):
        table, run_date = self._table, self._run_date

        def clear_if_empty(_, count: int) -> int:
            if count == 0:
                clear_partition(table.partition(run_date))
            return count

        count = beam.pvalue.AsSingleton(rows | "Count" >> beam.combiners.Count.Globally())
        return rows.pipeline | "Once" >> beam.Create([None]) | "ClearIfEmpty" >> beam.Map(clear_if_empty, count=count)


class ValidateForBigQuery(beam.PTransform):
    """Task rows -> (rows converted for the table, dead letters for rows that break its schema).

    FILE_LOADS has no per-row failure output: one bad row would fail the whole load job, so rows are
    checked here, before the sink.
    """

    def __init__(self, task_schema: pa.Schema, run_date: datetime.date) -> None:
        super().__init__()
        table_schema(task_schema)  # fails at construction for a schema BigQuery cannot hold
        self._arrow_schema = task_schema
        self._run_date = run_date

    def expand(self, rows):
        checked = rows | "ValidateRows" >> beam.ParDo(_ValidateRows(self._arrow_schema, self._run_date)).with_outputs(
            ERRORS_TAG, main="rows"
        )
        return checked.rows, checked[ERRORS_TAG]


class LoadPartition(beam.PTransform):
    """Validated rows -> the run's date partition of ``table``, replacing what an earlier run put there."""

    def __init__(
        self, table: str, task_schema: pa.Schema, run_date: datetime.date, temp_location: str | None = None
    ) -> None:
        super().__init__()
        self._table = TableRef.parse(table)
        self._schema = table_schema(task_schema)
        self._run_date = run_date
        self._temp_location = temp_location

    def expand(self, rows):
        _ = rows | "ClearIfEmpty" >> ClearPartitionIfEmpty(self._table, self._run_date)
        return rows | "LoadPartition" >> partition_sink(self._table, self._schema, self._run_date, self._temp_location)


class WriteErrorsToBigQuery(beam.PTransform):
    """Dead letters -> the run's partition of the sibling ``<table>_errors`` table."""

    def __init__(self, table: str, run_id: str, run_date: datetime.date, temp_location: str | None = None) -> None:
        super().__init__()
        self._table = TableRef.parse(table).errors_table()
        self._run_id = run_id
        self._run_date = run_date
        self._temp_location = temp_location

    def expand(self, letters):
        run_id, run_date = self._run_id, self._run_date
        _ = letters | "ClearIfEmpty" >> ClearPartitionIfEmpty(self._table, run_date)
        return (
            letters
            | "ErrorRows" >> beam.Map(lambda letter: dead_letter_row(letter, run_id, run_date))
            | "LoadErrorsPartition"
            >> partition_sink(self._table, table_schema(ERRORS_SCHEMA), run_date, self._temp_location)
        )
