"""BigQuery output: one partition per run date, rows validated first (schema and row checks: bigquery_schema).

The task's Arrow schema is the single source of truth: Parquet files and BigQuery tables get the same columns.
Each table is partitioned by a ``run_date`` DATE column. A run writes with FILE_LOADS to the partition decorator
``table$YYYYMMDD`` and WRITE_TRUNCATE, so a rerun of the same date replaces that partition and leaves every
other date alone (streaming inserts cannot do this: Beam's WRITE_TRUNCATE there deletes the whole table).
Dead letters go to the sibling ``<table>_errors`` table, partitioned the same way. Rows are validated against
the schema before the sink, so a bad row becomes a dead letter instead of failing the whole load job.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery

from common.records import ERRORS_TAG, DeadLetter
from common.text import preview
from pipelines.bigquery_schema import ERRORS_SCHEMA, dead_letter_row, partitioning, table_schema, to_bq_row

ERRORS_SUFFIX = "_errors"
STAGE = "bigquery"

# "PROJECT:DATASET.TABLE" (Beam's form) or "PROJECT.DATASET.TABLE" (BigQuery's SQL form).
_TABLE_SPEC = re.compile(
    r"^(?P<project>[a-z][-a-z0-9]{4,28}[a-z0-9])[:.](?P<dataset>\w{1,1024})\.(?P<table>[-\w]{1,1024})$"
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
