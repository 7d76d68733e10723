"""CLI: ``python -m pipelines.batch_inference --input ... --output ... --task sentiment|classify|summarize``.

Runs the job on the chosen Beam runner (DirectRunner locally, DataflowRunner in production), shows progress
while it runs and prints a summary at the end: rows written, errors, tokens, wall time and output files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import JobConfig, add_cli_arguments, rename_labels_flag
from pipelines.pipeline import build_pipeline
from pipelines.preflight import preflight
from pipelines.progress import PROGRESS_LOGGER, summarize_run
from transforms.registry import make_task_set


def parse_args(argv: Sequence[str] | None) -> tuple[PipelineOptions, JobConfig]:
    """Beam options plus the validated job config; ``--help`` lists the job's flags with their help."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.batch_inference",
        description="Run a Gemma model over JSONL/Parquet records with Apache Beam and write typed results. "
        "Beam's own flags (--runner, --project, --region, --temp_location, ...) are accepted too.",
    )
    add_cli_arguments(parser)
    args = list(argv) if argv is not None else sys.argv[1:]
    parser.parse_known_args(args)  # --help and bad choices exit here with a clear message
    options = PipelineOptions(rename_labels_flag(args))
    return options, JobConfig.from_options(options)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_memory_probe_warning)


def _drop_memory_probe_warning(record: logging.LogRecord) -> bool:
    """RunInference warns on every model load that it cannot read process memory here: noise for users."""
    return "memory usage cannot be fetched" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    try:
        options, config = parse_args(argv)
        tasks = make_task_set(config)
        preflight(config, tasks)
    except (ValueError, FileNotFoundError) as err:  # say what to fix, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = f"tasks={tasks.name} ({config.task_file})" if config.task_file else f"task={config.task}"
    print(f"run {config.run_id}: {what} model={config.model} input={config.input}", file=sys.stderr)
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    outputs = build_pipeline(pipeline, config, tasks=tasks)
    result = pipeline.run()
    result.wait_until_finish()
    summary = summarize_run(result, outputs.results_prefix, outputs.errors_prefix, time.monotonic() - started)
    print("\n".join(["", f"run {config.run_id} finished ({result.state})", *summary.lines()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
