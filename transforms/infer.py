"""InferTask: records -> (typed rows, dead letters) through build-request -> RunInference -> parse, with a dead
letter at each step that can fail a record."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from common import metrics
from common.records import ERRORS_TAG, DeadLetter, Record
from inference.requests import RecordResponse
from transforms.task import InferenceError, TaskSet


class _BuildRequests(beam.DoFn):
    def __init__(self, task: TaskSet) -> None:
        self._task = task

    def process(self, record: Record):
        try:
            yield record, self._task.build_request(record)
        except ValueError as err:
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, DeadLetter(record.id, "prompt", str(err), record.source))


class _ToRows(beam.DoFn):
    def __init__(self, task: TaskSet, run_id: str) -> None:
        self._task = task
        self._run_id = run_id
        self._rows = Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.RESULTS)

    def process(self, element: tuple[Record, RecordResponse]):
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

    def __init__(self, task: TaskSet, handler: ModelHandler, run_id: str) -> None:
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
