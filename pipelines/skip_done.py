"""Incremental runs (``--skip_done PATH``): records whose result is already in PATH are not run again.

PATH is an earlier run's output folder (local or gs://): its ``results-*.parquet`` / ``results-*.jsonl`` rows
carry ``result_key`` (``common.fingerprint``: the record's id and text, the task definition, the model). A
record whose key is among them would get the same result again, so it skips inference; by default its earlier
row is carried into this run's output (``--skipped_rows carry``: the new folder is complete on its own, with
the earlier row's lineage and this run's pass-through fields), or left out (``drop``: the output holds only
the new work). Records are matched to earlier rows by a CoGroupByKey on the key, which scales with the data
(no side input holding every key). A PATH with no result files skips nothing (the first run).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from common import metrics
from common.fingerprint import result_key
from common.records import Record
from common.text import extra_json
from transforms.task import TIMING_COLUMNS

SKIPPED_TAG = "skipped"
CARRY, DROP = "carry", "drop"
PARQUET_BATCH_ROWS = 1024


def _rows_of(readable: fileio.ReadableFile) -> Iterator[dict[str, Any]]:
    """The rows of one earlier results file (Parquet or JSON Lines)."""
    path = readable.metadata.path
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with readable.open() as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield from batch.to_pylist()
    elif path.endswith(".jsonl"):
        with readable.open() as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def carried_row(row: dict[str, Any], schema: pa.Schema) -> dict[str, Any] | None:
    """An earlier row in this run's schema (maps as dicts, timestamps as datetimes, pass-through fields as a
    JSON string), or None when it lacks one of the schema's columns (it was written by another version: run
    the record again). Timing columns, which older versions did not write, are null when missing."""
    if any(name not in row and name not in TIMING_COLUMNS for name in schema.names):
        return None
    out = {name: row.get(name) for name in schema.names}
    for field in schema:
        value = out[field.name]
        if pa.types.is_map(field.type) and isinstance(value, list):  # Parquet maps read as (key, value) pairs
            out[field.name] = dict(value)
        elif pa.types.is_timestamp(field.type) and isinstance(value, str):  # JSON Lines hold ISO text
            out[field.name] = datetime.datetime.fromisoformat(value)
    if not isinstance(out.get("extra"), str):  # JSON Lines hold the pass-through fields as an object
        out["extra"] = extra_json(out.get("extra") or {})
    return out


class _KeyedDoneRows(beam.DoFn):
    def __init__(self, schema: pa.Schema, keys_only: bool) -> None:
        self._schema = schema
        self._keys_only = keys_only

    def process(self, readable: fileio.ReadableFile):
        for row in _rows_of(readable):
            key = row.get("result_key")
            if not key:
                continue
            if self._keys_only:
                yield key, None
                continue
            carried = carried_row(row, self._schema)
            if carried is not None:
                yield key, carried


class ReadDoneRows(beam.PTransform):
    """PATH -> (result_key, earlier row) for every row of its result files (row None with ``keys_only``)."""

    def __init__(self, path: str, schema: pa.Schema, keys_only: bool = False) -> None:
        super().__init__()
        self._pattern = FileSystems.join(path.rstrip("/") or path, "results-*")
        self._schema = schema
        self._keys_only = keys_only

    def expand(self, pbegin):
        return (
            pbegin
            | "MatchDone" >> fileio.MatchFiles(self._pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "OpenDone" >> fileio.ReadMatches()
            | "KeyDoneRows" >> beam.ParDo(_KeyedDoneRows(self._schema, self._keys_only))
        )


class _Split(beam.DoFn):
    """(key, {records, done}) -> records to run; carried rows or skipped records on the side."""

    def __init__(self, carry: bool) -> None:
        self._carry = carry
        self._skipped = Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.SKIPPED_DONE)

    def process(self, element: tuple[str, dict[str, list]]):
        _key, grouped = element
        records: list[Record] = list(grouped["records"])
        done = list(grouped["done"])
        if not done:
            yield from records
            return
        for record in records:
            self._skipped.inc()
            if self._carry:
                yield beam.pvalue.TaggedOutput(SKIPPED_TAG, {**done[0], "extra": extra_json(record.extra)})
            else:
                yield beam.pvalue.TaggedOutput(SKIPPED_TAG, record.id)


class SkipDone(beam.PTransform):
    """Records -> (records still to run, skipped ones: carried rows with ``carry``, else their ids)."""

    def __init__(self, path: str, fingerprint: str, schema: pa.Schema, skipped_rows: str = CARRY) -> None:
        super().__init__()
        if skipped_rows not in (CARRY, DROP):
            raise ValueError(f"skipped_rows must be {CARRY!r} or {DROP!r}, got {skipped_rows!r}")
        self._path = path
        self._fingerprint = fingerprint
        self._schema = schema
        self._carry = skipped_rows == CARRY

    def expand(self, records):
        fingerprint = self._fingerprint
        keyed = records | "KeyRecords" >> beam.Map(lambda r: (result_key(r.id, r.text, fingerprint), r))
        done = records.pipeline | "ReadDone" >> ReadDoneRows(self._path, self._schema, keys_only=not self._carry)
        split = (
            {"records": keyed, "done": done}
            | "MatchDone" >> beam.CoGroupByKey()
            | "Split" >> beam.ParDo(_Split(self._carry)).with_outputs(SKIPPED_TAG, main="todo")
        )
        return split.todo, split[SKIPPED_TAG]
