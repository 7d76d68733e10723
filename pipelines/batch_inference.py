"""CLI: ``python -m pipelines.batch_inference --input ... --output ... --task sentiment|classify|summarize``.

Runs the job on the chosen Beam runner (DirectRunner locally, DataflowRunner in production), shows progress
while it runs and prints a summary at the end: rows written, errors, tokens, wall time, output files, the run
report, and each task's accuracy, macro-F1 and calibration error when the records carry gold labels.

Exit codes: 0 the run finished and published; 1 the run failed (over --max_error_rate, or a worker error):
nothing was published and the report says why, with the top dead-letter reasons; 2 the run could not start
(a bad or unknown flag, input that matches nothing, a model that does not resolve): one line says what to
fix, and nothing was written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from common.errors import UserInputError
from pipelines.failure_report import failure_lines
from pipelines.flags import check_flags
from pipelines.options import JobConfig, add_cli_arguments, rename_labels_flag
from pipelines.pipeline import build_pipeline, with_task_adapter
from pipelines.preflight import preflight
from pipelines.progress import PROGRESS_LOGGER, summarize_run
from pipelines.publish import staging_dir
from pipelines.report import summary_lines
from transforms.registry import make_task_set
from transforms.task import TaskSet

_LOG = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None, strict: bool = True) -> tuple[PipelineOptions, JobConfig]:
    """Beam options plus the validated job config; ``--help`` lists the job's flags with their help.

    ``strict``: a flag neither the job nor Beam knows is a UserInputError (else a logged warning: the Flex
    Template, whose parameters Dataflow has already checked against metadata.json).
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.batch_inference",
        description="Run a Gemma model over JSONL/Parquet records with Apache Beam and write typed results. "
        "Beam's own flags (--runner, --project, --region, --temp_location, ...) are accepted too.",
        allow_abbrev=False,
    )
    add_cli_arguments(parser)
    args = list(argv) if argv is not None else sys.argv[1:]
    parser.parse_known_args(args)  # --help and bad choices exit here with a clear message
    try:
        check_flags(args, add_cli_arguments)
    except UserInputError as err:
        if strict:
            raise
        _LOG.warning("%s", err)
    options = PipelineOptions(rename_labels_flag(args))
    return options, JobConfig.from_options(options)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_noise)


def _drop_noise(record: logging.LogRecord) -> bool:
    """RunInference warns on every model load that it cannot read process memory here; and a run over
    --max_error_rate is reported by ``failure_lines`` at the end, not as a traceback in the log."""
    message = record.getMessage()
    return "memory usage cannot be fetched" not in message and "is over --max_error_rate" not in message


def _start(argv: Sequence[str] | None) -> tuple[JobConfig, TaskSet, beam.Pipeline, str, str]:
    """Parse, check and build; raises UserInputError or ValueError before anything is written."""
    options, config = parse_args(argv)
    tasks = make_task_set(config)
    config = with_task_adapter(config, tasks)
    preflight(config, tasks)
    pipeline = beam.Pipeline(options=options)
    outputs = build_pipeline(pipeline, config, tasks=tasks)
    return config, tasks, pipeline, outputs.results_prefix, outputs.errors_prefix


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    try:
        config, tasks, pipeline, results_prefix, errors_prefix = _start(argv)
    except (ValueError, FileNotFoundError) as err:  # UserInputError included: say what to fix, nothing written
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = f"tasks={tasks.name} ({config.task_file})" if config.task_file else f"task={config.task}"
    print(f"run {config.run_id}: {what} model={config.model} input={config.input}", file=sys.stderr)
    started = time.monotonic()
    staging = staging_dir(config.output, config.run_id)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as err:  # the run failed: a short report (Beam has logged any traceback), exit 1
        print("\n".join(["", *failure_lines(config.run_id, err, staging)]), file=sys.stderr)
        return 1
    if result.state != PipelineState.DONE:
        print(f"\nrun {config.run_id} ended {result.state}: nothing was published", file=sys.stderr)
        return 1
    summary = summarize_run(result, results_prefix, errors_prefix, time.monotonic() - started)
    report = summary_lines(config.output, config.run_id)
    print("\n".join(["", f"run {config.run_id} finished ({result.state})", *summary.lines(), *report]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
