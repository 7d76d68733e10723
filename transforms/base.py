"""What every task shares: the record and dead-letter types, text cleaning, lineage columns, and the
``InferTask`` transform that runs build-request -> RunInference -> parse with dead letters at each step.

A task is a small frozen object with three jobs: build a request from a record, parse the model's response
into a typed row, and declare the row's Arrow schema. Tasks hold no Beam or torch state.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from gemma_ops.batch_requests import Request, Response

INPUT_PREVIEW_CHARS = 2000
ERRORS_TAG = "errors"
METRICS_NAMESPACE = "gemma_pipeline"

# Gemma's control tokens are plain text to the tokenizer, so a record containing "<start_of_turn>" could
# open a new turn. They are defused by swapping the angle brackets for look-alikes before the text enters
# a prompt.
CONTROL_TOKEN = re.compile(r"<(/?)(start_of_turn|end_of_turn|bos|eos|pad|unk|mask|start_of_image|end_of_image)>")
WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Record:
    """One validated input record. ``extra`` holds every other field, passed through to the output."""

    id: str
    text: str
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the raw input, truncated: what a dead letter shows
    truncated: bool = False  # the text was cut to --max_record_bytes (--on_overflow truncate)


@dataclass(frozen=True)
class DeadLetter:
    """A record (or line) that produced no result, and why. ``stage`` says where it failed."""

    id: str | None
    stage: str
    error: str
    input: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, "error": self.error, "input": self.input}


def preview(text: str, limit: int = INPUT_PREVIEW_CHARS) -> str:
    """The start of ``text``, marked when cut, for dead-letter rows."""
    return text if len(text) <= limit else text[:limit] + f"...[{len(text) - limit} more chars]"


def strip_control_chars(text: str) -> str:
    """Drop control and format characters (keeping newlines and tabs) that only confuse the model."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))


def prompt_safe(text: str) -> str:
    """Untrusted text as it goes between a prompt's delimiters: one line, no control tokens, no fences.

    Collapsing whitespace keeps a record from faking the next few-shot line ("Sentiment: ..."), and the
    delimiter swap keeps it from closing its own quote early.
    """
    text = CONTROL_TOKEN.sub(lambda m: f"\u2039{m.group(1)}{m.group(2)}\u203a", text)
    text = text.replace('"""', "\u201c\u201c\u201c")
    return WHITESPACE.sub(" ", text).strip()


def _finite(value: Any) -> Any:
    """NaN and infinities (Python's JSON reader accepts them, Parquet floats hold them) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def extra_json(extra: dict[str, Any]) -> str:
    """Pass-through fields as one strict JSON object string (dates and other non-JSON values as strings,
    non-finite numbers as null), so every JSON reader and BigQuery's JSON type can parse it."""
    return json.dumps(_finite(extra), ensure_ascii=False, sort_keys=True, default=str, allow_nan=False)


LINEAGE_FIELDS = [
    pa.field("truncated", pa.bool_(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("output_tokens", pa.int64(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("extra", pa.string(), nullable=False),
]


class Task(ABC):
    """A task: request building, response parsing and the typed output schema."""

    name: str

    @abstractmethod
    def build_request(self, record: Record) -> Request:
        """The model request for one record."""

    @abstractmethod
    def task_columns(self, response: Response) -> dict[str, Any]:
        """The task's own columns from a successful response; raise ValueError for output that breaks the
        schema (it becomes a dead letter)."""

    @abstractmethod
    def task_fields(self) -> list[pa.Field]:
        """Arrow fields of the task's own columns, in output order."""

    def schema(self) -> pa.Schema:
        head = [pa.field("id", pa.string(), nullable=False), pa.field("task", pa.string(), nullable=False)]
        return pa.schema(head + self.task_fields() + LINEAGE_FIELDS)

    def to_row(self, record: Record, response: Response, run_id: str) -> dict[str, Any]:
        """The output row: id, task, the task's columns, lineage, pass-through fields."""
        if response.error:
            raise InferenceError(response.error)
        output_tokens = getattr(response, "output_tokens", 0)
        row = {"id": record.id, "task": self.name}
        row.update(self.task_columns(response))
        row.update(
            truncated=response.truncated or record.truncated,
            model=response.model,
            prompt_tokens=response.prompt_tokens,
            output_tokens=output_tokens,
            run_id=run_id,
            extra=extra_json(record.extra),
        )
        return row


class InferenceError(RuntimeError):
    """The engine refused one request (its message says why); the record becomes a dead letter."""


class _BuildRequests(beam.DoFn):
    def __init__(self, task: Task) -> None:
        self._task = task

    def process(self, record: Record):
        try:
            yield record, self._task.build_request(record)
        except ValueError as err:
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, DeadLetter(record.id, "prompt", str(err), record.source))


class _ToRows(beam.DoFn):
    def __init__(self, task: Task, run_id: str) -> None:
        self._task = task
        self._run_id = run_id
        self._rows = Metrics.counter(METRICS_NAMESPACE, "results")

    def process(self, element: tuple[Record, Response]):
        record, response = element
        try:
            row = self._task.to_row(record, response, self._run_id)
        except InferenceError as err:
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, DeadLetter(record.id, "inference", str(err), record.source))
            return
        except (ValueError, KeyError, TypeError) as err:
            message = f"{type(err).__name__}: {err}"
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, DeadLetter(record.id, "parse", message, record.source))
            return
        self._rows.inc()
        yield row


def _failed_batch_letters(failure: tuple[Any, Any]):
    """RunInference fails whole batches: one dead letter per element of the batch, naming the error."""
    batch, error = failure
    message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    if isinstance(error, tuple) and len(error) >= 2:  # (exc_type, repr, traceback) from exception handling
        message = str(error[1])
    for record, _request in batch:
        yield DeadLetter(record.id, "inference", message, record.source)


class InferTask(beam.PTransform):
    """Records -> (rows, dead letters): build requests, RunInference, parse into the task's typed rows."""

    def __init__(self, task: Task, handler: ModelHandler, run_id: str) -> None:
        super().__init__()
        self._task = task
        self._handler = handler
        self._run_id = run_id

    def expand(self, records):
        built = records | "BuildRequests" >> beam.ParDo(_BuildRequests(self._task)).with_outputs(
            ERRORS_TAG, main="requests"
        )
        responses, dlq = built.requests | "RunInference" >> RunInference(self._handler).with_exception_handling()
        failed = dlq.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch_letters)
        parsed = responses | "ToRows" >> beam.ParDo(_ToRows(self._task, self._run_id)).with_outputs(
            ERRORS_TAG, main="rows"
        )
        errors = (built[ERRORS_TAG], failed, parsed[ERRORS_TAG]) | "TaskErrors" >> beam.Flatten()
        return parsed.rows, errors
