"""Reading a published output folder for the run report: its record of the run, its result rows (Parquet or
JSON Lines, one batch at a time), its dead letters, and the first records of the run's input."""

from __future__ import annotations

import datetime
import json
import posixpath
from collections.abc import Iterator
from typing import Any

from apache_beam.io.filesystems import FileSystems

from common.errors import UserInputError
from common.records import Record
from pipelines.io import RecordSpec
from pipelines.publish import read_published
from pipelines.run_info import RunInfo

PARQUET_BATCH_ROWS = 1024


class NotAPublishedRun(UserInputError):
    """The folder holds no published run the report can describe; the message says what to do."""


def published_run(output: str) -> tuple[RunInfo, list[str]]:
    """The run that published ``output`` and the paths of its files."""
    record = read_published(output)
    if record is None:
        raise NotAPublishedRun(
            f"{output} holds no _PUBLISHED.json: no run has published there (a failed run keeps its files in "
            ".staging-<run_id>/ and gets no report); check the folder"
        )
    if "run" not in record:
        raise NotAPublishedRun(
            f"{output}/_PUBLISHED.json does not describe its run (it was published by an older version); "
            "rerun the job to get a report"
        )
    folder = output.rstrip("/") or output
    return RunInfo.from_dict(record["run"]), [FileSystems.join(folder, name) for name in record["files"]]


def _kind(path: str) -> str:
    return posixpath.basename(path).split("-", 1)[0]


def result_rows(files: list[str]) -> Iterator[dict[str, Any]]:
    """Every result row of the published files, as the Parquet files hold them (JSON Lines rows made alike:
    ``extra`` as a JSON string, ``inferred_at`` as a datetime)."""
    for path in sorted(p for p in files if _kind(p) == "results"):
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            with FileSystems.open(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=PARQUET_BATCH_ROWS):
                    yield from batch.to_pylist()
        else:
            for row in _json_lines(path):
                if not isinstance(row.get("extra"), str):
                    row["extra"] = json.dumps(row.get("extra") or {})
                if isinstance(row.get("inferred_at"), str):
                    row["inferred_at"] = datetime.datetime.fromisoformat(row["inferred_at"])
                yield row


def dead_letters(files: list[str]) -> Iterator[dict[str, Any]]:
    for path in sorted(p for p in files if _kind(p) == "errors"):
        yield from _json_lines(path)


def _json_lines(path: str) -> Iterator[dict[str, Any]]:
    with FileSystems.open(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def first_records(run: RunInfo, count: int) -> tuple[list[Record], str | None]:
    """The run input's first ``count`` valid records (the report's sample rows show their text), or none and
    why when the input cannot be read any more (moved, deleted, no permission)."""
    from pipelines.plan import read_sample

    spec = RecordSpec(run.text_field, run.id_field, run.max_record_bytes, run.on_overflow)
    try:
        return list(read_sample(run.input, spec, count, run.input_format).records), None
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError; BeamIOError too
        return [], f"the input {run.input} could not be read again ({err}); sample rows show no text"
