"""InferTask: records -> (typed rows, dead letters) through build-request -> RunInference -> parse, with a dead
letter at each step that can fail a record.

RunInference runs without Beam's batch dead-letter output on purpose: the handler already turns every failure
a request can cause into that request's error response (it bisects a failed batch), so an exception that still
escapes it is the worker's (a broken accelerator). It fails the bundle and the runner retries it on another
worker, instead of dead-lettering whole batches of good records.
"""

from __future__ import annotations

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
    def __init__(self, task: TaskSet, run_id: str, fingerprint: str) -> None:
        self._task = task
        self._run_id = run_id
        self._fingerprint = fingerprint
        self._rows = Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.RESULTS)

    def process(self, element: tuple[Record, RecordResponse]):
        record, response = element
        try:
            row = self._task.to_row(record, response, self._run_id, self._fingerprint)
        except InferenceError as err:
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, DeadLetter(record.id, "inference", str(err), record.source))
            return
        except (ValueError, KeyError, TypeError) as err:
            message = f"{type(err).__name__}: {err}"
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, DeadLetter(record.id, "parse", message, record.source))
            return
        self._rows.inc()
        yield row


class InferTask(beam.PTransform):
    """Records -> (rows, dead letters): build requests, RunInference, parse into the task's typed rows.

    ``fingerprint``: the job's (task and model, ``common.fingerprint.job_fingerprint``); each row's
    ``result_key`` hashes it with the record."""

    def __init__(self, task: TaskSet, handler: ModelHandler, run_id: str, fingerprint: str) -> None:
        super().__init__()
        self._task = task
        self._handler = handler
        self._run_id = run_id
        self._fingerprint = fingerprint

    def expand(self, records):
        built = records | "BuildRequests" >> beam.ParDo(_BuildRequests(self._task)).with_outputs(
            ERRORS_TAG, main="requests"
        )
        responses = built.requests | "RunInference" >> RunInference(self._handler)
        parsed = responses | "ToRows" >> beam.ParDo(_ToRows(self._task, self._run_id, self._fingerprint)).with_outputs(
            ERRORS_TAG, main="rows"
        )
        errors = (built[ERRORS_TAG], parsed[ERRORS_TAG]) | "TaskErrors" >> beam.Flatten()
        return parsed.rows, errors
