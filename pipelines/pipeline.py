"""The pipeline builder: read -> task (request, RunInference, parse) -> write results and dead letters ->
check the accounting -> publish -> write the run report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from common.fingerprint import job_fingerprint
from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.accounting import AfterCheck, CheckAccounting
from pipelines.bigquery import LoadPartition, ValidateForBigQuery, WriteErrorsToBigQuery
from pipelines.io import ReadRecords, RecordSpec, WriteErrors, WriteResults, output_prefix
from pipelines.options import JobConfig
from pipelines.progress import ReportProgress
from pipelines.publish import Publish, staging_dir
from pipelines.report.step import WriteReport
from pipelines.run_info import RunInfo
from pipelines.skip_done import SkipDone
from transforms.infer import InferTask
from transforms.registry import make_task_set
from transforms.task import TaskSet


def with_task_adapter(config: JobConfig, tasks: TaskSet) -> JobConfig:
    """The job's config with the task file's adapter: key as its --adapter; the two must agree when both are
    given (ValueError)."""
    if tasks.adapter is None or config.adapter == tasks.adapter:
        return config
    if config.adapter is not None:
        raise ValueError(
            f"--adapter {config.adapter} and the task file's adapter: {tasks.adapter} differ; give one of them"
        )
    return dataclasses.replace(config, adapter=tasks.adapter)


def make_handler(config: JobConfig) -> GemmaModelHandler:
    """The Gemma handler for a job: its model settings, as declared."""
    return GemmaModelHandler(ModelSettings.of(config))


@dataclass(frozen=True)
class JobOutputs:
    """The pipeline's main PCollections (tests assert on them) and where the files go."""

    records: beam.PCollection
    rows: beam.PCollection
    errors: beam.PCollection
    results_prefix: str
    errors_prefix: str


def job_fingerprint_of(config: JobConfig, task: TaskSet) -> str:
    """The task's and the model's fingerprints, which every row's result_key hashes in."""
    return job_fingerprint(task.fingerprint(), ModelSettings.of(config).fingerprint())


def _infer(records: beam.PCollection, config: JobConfig, task: TaskSet, handler: ModelHandler, progress: bool):
    """Records -> (rows, task dead letters, skipped): with --skip_done, records already done are not run;
    ``skipped`` holds their ids when their earlier rows are not carried (else it is empty)."""
    fingerprint = job_fingerprint_of(config, task)
    carried = skipped = None
    if config.skip_done:
        records, skipped = records | "SkipDone" >> SkipDone(
            config.skip_done, fingerprint, task.schema(), config.skipped_rows
        )
        if config.skipped_rows == "carry":
            carried, skipped = skipped, None
    rows, task_errors = records | "Infer" >> InferTask(task, handler, config.run_id, fingerprint)
    if progress:
        rows = rows | "Progress" >> beam.ParDo(ReportProgress())
    if carried is not None:
        rows = (rows, carried) | "WithCarriedRows" >> beam.Flatten()
    if skipped is None:
        skipped = records.pipeline | "NothingDropped" >> beam.Create([])
    return rows, task_errors, skipped


def build_pipeline(
    pipeline: beam.Pipeline,
    config: JobConfig,
    handler: ModelHandler | None = None,
    progress: bool = True,
    tasks: TaskSet | None = None,
) -> JobOutputs:
    """Add the whole job to ``pipeline``; ``handler`` replaces the Gemma handler (tests use a fake one),
    ``tasks`` the config's tasks when the caller has built them already."""
    task = tasks or make_task_set(config)
    config = with_task_adapter(config, task)
    records, read_errors = pipeline | "Read" >> ReadRecords(config.input, RecordSpec.of(config), config.input_format)
    rows, task_errors, skipped = _infer(records, config, task, handler or make_handler(config), progress)
    errors = (read_errors, task_errors) | "AllErrors" >> beam.Flatten()
    # Sinks write to a run-scoped folder; Publish swaps it in only after the writes and the accounting check.
    staging = staging_dir(config.output, config.run_id)
    if config.output_format == "bigquery":
        rows, rejected = rows | "ValidateForBigQuery" >> ValidateForBigQuery(task.schema(), config.run_date)
        errors = (errors, rejected) | "WithRejectedRows" >> beam.Flatten()
        written = (errors | "WriteErrors" >> WriteErrors(staging, config.num_shards),)
    else:
        written = (
            rows | "WriteResults" >> WriteResults(staging, task.schema(), config.output_format, config.num_shards),
            errors | "WriteErrors" >> WriteErrors(staging, config.num_shards),
        )
    inputs = (records, read_errors) | "AllInputs" >> beam.Flatten()
    accounting = CheckAccounting(config.max_error_rate, staging, after=written)
    checked = (inputs, rows, errors, skipped) | "Accounting" >> accounting
    if config.output_format == "bigquery":
        # Both partitions are replaced only once the accounting check passed: a run over --max_error_rate
        # leaves the date's results and its dead letters as the previous run left them, together.
        checked_rows = rows | "RowsAfterAccounting" >> AfterCheck(checked)
        checked_errors = errors | "ErrorsAfterAccounting" >> AfterCheck(checked)
        _ = checked_rows | "LoadResults" >> LoadPartition(config.output_table, task.schema(), config.run_date)
        _ = checked_errors | "LoadErrors" >> WriteErrorsToBigQuery(config.output_table, config.run_id, config.run_date)
    run = RunInfo.of(config, task).to_dict()
    published = (checked,) | "Publish" >> Publish(config.output, staging, config.run_id, run)
    _ = published | "Report" >> WriteReport(config.output, config.run_id)
    return JobOutputs(
        records=records,
        rows=rows,
        errors=errors,
        results_prefix=output_prefix(config.output, "results"),
        errors_prefix=output_prefix(config.output, "errors"),
    )
