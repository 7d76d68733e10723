"""Reading records (JSONL, Parquet; local, gs://, globs) and writing results and dead letters.

Every input line or row ends up as a Record or a DeadLetter that says why; blank lines are not records.
Lines are read as bytes so that invalid UTF-8 is a dead letter, not a crashed job.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from common import metrics
from common.records import ERRORS_TAG, DeadLetter, Record
from common.settings import default_of
from common.text import preview, strip_control_chars
from inference.settings import OVERFLOW_POLICIES, ModelSettings
from pipelines.options import JobConfig, RunSettings

PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class RecordSpec:
    """How to turn an input object into a Record; the defaults are the job's declared ones."""

    text_field: str = default_of(RunSettings, "text_field")
    id_field: str = default_of(RunSettings, "id_field")
    max_record_bytes: int = default_of(RunSettings, "max_record_bytes")
    # A record over max_record_bytes: "error" dead-letters it, "truncate" cuts its text to fit and marks the
    # row ``truncated`` (the --on_overflow policy, which also governs prompts over --max_prompt_tokens).
    on_overflow: str = default_of(ModelSettings, "on_overflow")

    @classmethod
    def of(cls, config: JobConfig) -> RecordSpec:
        """The record spec of a job's config."""
        return cls(config.text_field, config.id_field, config.max_record_bytes, config.on_overflow)

    def __post_init__(self) -> None:
        if self.on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be 'truncate' or 'error', got {self.on_overflow!r}")
        if self.max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be >= 1, got {self.max_record_bytes}")


def stable_id(obj: dict[str, Any]) -> str:
    """A content hash for records without an id: the same record gets the same id in every run."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes`` (never half a character)."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _oversize_letter(what: str, size: int, spec: RecordSpec, known_id: str | None, source: str) -> DeadLetter:
    return DeadLetter(
        known_id,
        "read",
        f"{what} is {size} bytes, over --max_record_bytes={spec.max_record_bytes}; "
        "raise the limit or pass --on_overflow truncate to keep its start",
        preview(source),
    )


def _require_valid_unicode(record_id: str, extra: dict[str, Any]) -> None:
    """JSON's \\uXXXX escapes can hold lone surrogates, which no UTF-8 sink can write: refuse them here (the text
    field has them stripped) rather than fail the whole write step later."""
    for name, value in (("id", record_id), ("extra fields", extra)):
        try:
            json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"{name} holds a lone surrogate {err.object[err.start : err.end]!r} (an unpaired \\ud800-\\udfff "
                "escape), which is not valid Unicode; fix the program that wrote this record"
            ) from None


def to_record(obj: Any, spec: RecordSpec, source: str, oversized: bool = False) -> Record:
    """Validate one decoded object; ValueError says what is wrong with it.

    ``oversized``: the record was over --max_record_bytes and the policy is truncate, so its text is cut to
    that many bytes and the Record says ``truncated``.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    raw_id = obj.get(spec.id_field)
    if isinstance(raw_id, (dict, list)):
        raise ValueError(f"id field {spec.id_field!r} must be a string or number, got {type(raw_id).__name__}")
    record_id = str(raw_id) if raw_id is not None and str(raw_id) != "" else stable_id(obj)
    if spec.text_field not in obj:
        raise ValueError(
            f"missing text field {spec.text_field!r} (fields: {sorted(obj)[:10]}); pass --text_field to pick one"
        )
    text = obj[spec.text_field]
    if not isinstance(text, str):
        raise ValueError(f"text field {spec.text_field!r} must be a string, got {type(text).__name__}")
    text = strip_control_chars(text).strip()
    if not text:
        raise ValueError(f"text field {spec.text_field!r} is empty")
    truncated = oversized and len(text.encode("utf-8")) > spec.max_record_bytes
    if truncated:
        text = cut_utf8(text, spec.max_record_bytes).rstrip()
    extra = {k: v for k, v in obj.items() if k not in (spec.text_field, spec.id_field)}
    _require_valid_unicode(record_id, extra)
    return Record(id=record_id, text=text, extra=extra, source=preview(source), truncated=truncated)


def parse_line(raw: bytes, spec: RecordSpec) -> Record | DeadLetter | None:
    """One JSONL line -> a Record, a DeadLetter (stage "read" or "validate"), or None for a blank line."""
    oversized = len(raw) > spec.max_record_bytes
    if oversized and spec.on_overflow == "error":
        return _oversize_letter("line", len(raw), spec, None, raw[:4096].decode("utf-8", errors="replace"))
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return DeadLetter(
            None, "read", f"invalid UTF-8 at byte {err.start}", preview(raw.decode("utf-8", errors="replace"))
        )
    line = line.lstrip("\ufeff").strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return DeadLetter(None, "read", f"malformed JSON: {err}", preview(line))
    try:
        return to_record(obj, spec, line, oversized=oversized)
    except ValueError as err:
        known_id = obj.get(spec.id_field) if isinstance(obj, dict) else None
        ok_id = str(known_id) if isinstance(known_id, (str, int, float)) else None
        return DeadLetter(ok_id, "validate", str(err), preview(line))


class _ParseLines(beam.DoFn):
    def __init__(self, spec: RecordSpec) -> None:
        self._spec = spec
        self._lines = Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.INPUT_LINES)

    def process(self, raw: bytes):
        parsed = parse_line(raw, self._spec)
        if parsed is None:
            return
        self._lines.inc()
        if isinstance(parsed, DeadLetter):
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, parsed)
        else:
            yield parsed


class _ReadParquetFile(beam.DoFn):
    """One Parquet file -> Records; an unreadable file (bad footer, wrong schema) is one dead letter."""

    def __init__(self, spec: RecordSpec) -> None:
        self._spec = spec
        self._lines = Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.INPUT_LINES)

    def process(self, readable: fileio.ReadableFile):
        import pyarrow.parquet as pq

        path = readable.metadata.path
        try:
            with readable.open() as handle:
                parquet = pq.ParquetFile(handle)
                if self._spec.text_field not in parquet.schema_arrow.names:
                    raise ValueError(
                        f"no column {self._spec.text_field!r} (columns: {parquet.schema_arrow.names[:10]}); "
                        "pass --text_field to pick one"
                    )
                for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                    for row in batch.to_pylist():
                        self._lines.inc()
                        yield from self._row(row, path)
        except (
            OSError,
            ValueError,
        ) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
            self._lines.inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG, DeadLetter(None, "read", f"cannot read Parquet file: {err}", path)
            )

    def _row(self, row: dict[str, Any], path: str):
        source = json.dumps(row, ensure_ascii=False, default=str)
        raw_id = row.get(self._spec.id_field)
        known = str(raw_id) if isinstance(raw_id, (str, int, float)) else None
        size = len(source.encode("utf-8", errors="replace"))
        oversized = size > self._spec.max_record_bytes
        if oversized and self._spec.on_overflow == "error":
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, _oversize_letter("row", size, self._spec, known, source))
            return
        try:
            yield to_record(row, self._spec, source, oversized=oversized)
        except ValueError as err:
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG, DeadLetter(known, "validate", f"{err} (in {path})", preview(source))
            )


def detect_format(pattern: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    return "parquet" if pattern.rstrip("*").endswith((".parquet", ".parq", ".pq")) else "jsonl"


class ReadRecords(beam.PTransform):
    """A file pattern -> (records, dead letters)."""

    def __init__(self, pattern: str, spec: RecordSpec, input_format: str = "auto") -> None:
        super().__init__()
        self._pattern = pattern
        self._spec = spec
        self._format = detect_format(pattern, input_format)

    def expand(self, pbegin):
        if self._format == "parquet":
            parsed = (
                pbegin
                | "MatchParquet" >> fileio.MatchFiles(self._pattern)
                | "OpenParquet" >> fileio.ReadMatches()
                | "ReadParquet" >> beam.ParDo(_ReadParquetFile(self._spec)).with_outputs(ERRORS_TAG, main="records")
            )
        else:
            parsed = (
                pbegin
                | "ReadLines" >> beam.io.ReadFromText(self._pattern, coder=beam.coders.BytesCoder())
                | "ParseLines" >> beam.ParDo(_ParseLines(self._spec)).with_outputs(ERRORS_TAG, main="records")
            )
        # Spread records over workers: a few large files would otherwise pin inference to a few bundles.
        records = parsed.records | "Spread" >> beam.Reshuffle()
        return records, parsed[ERRORS_TAG]


def output_prefix(output: str, name: str) -> str:
    return FileSystems.join(output.rstrip("/") or output, name)


def _json_value(value: Any) -> str:
    """What JSON cannot hold as is: dates and times as ISO-8601 text, anything else as its str."""
    return value.isoformat() if isinstance(value, (datetime.date, datetime.datetime)) else str(value)


def _to_json(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=_json_value)


def error_json(letter: DeadLetter) -> str:
    """A dead letter as one JSON line; ASCII-escaped when it holds lone surrogates (a bad record's id, say),
    which the UTF-8 text sink could not write and the whole errors file would be lost with it."""
    line = _to_json(letter.to_dict())
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(letter.to_dict(), ensure_ascii=True, default=str)
    return line


def _result_to_json(row: dict[str, Any]) -> str:
    """A result row as JSON; the pass-through fields go back to being an object (Parquet keeps a string)."""
    return _to_json({**row, "extra": json.loads(row["extra"])})


class WriteResults(beam.PTransform):
    """Typed rows -> results-*.parquet (declared schema) or results-*.jsonl under ``output``."""

    def __init__(self, output: str, schema, output_format: str = "parquet", num_shards: int = 0) -> None:
        super().__init__()
        self._prefix = output_prefix(output, "results")
        self._schema = schema
        self._format = output_format
        self._num_shards = num_shards

    def expand(self, rows):
        if self._format == "parquet":
            return rows | "WriteParquet" >> beam.io.WriteToParquet(
                self._prefix, self._schema, num_shards=self._num_shards, file_name_suffix=".parquet"
            )
        if self._format == "jsonl":
            return (
                rows
                | "RowsToJson" >> beam.Map(_result_to_json)
                | "WriteJsonl"
                >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
            )
        raise ValueError(f"unknown output format {self._format!r} (expected parquet or jsonl)")


class WriteErrors(beam.PTransform):
    """Dead letters -> errors-*.jsonl under ``output`` (one empty file when there are none)."""

    def __init__(self, output: str, num_shards: int = 0) -> None:
        super().__init__()
        self._prefix = output_prefix(output, "errors")
        self._num_shards = num_shards

    def expand(self, letters):
        return (
            letters
            | "CountErrors" >> beam.Map(_count_error)
            | "ErrorsToJson" >> beam.Map(error_json)
            | "WriteErrors" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
        )


_ERRORS = Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.ERRORS)


def _count_error(letter: DeadLetter) -> DeadLetter:
    Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.errors_counter(letter.stage)).inc()
    _ERRORS.inc()
    return letter
