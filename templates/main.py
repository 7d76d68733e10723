"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): template parameters -> the Beam pipeline.

Kept thin: the pipeline lives in the installed package. This file only adapts what a launch can express:
- Cloud Scheduler sends the same request every day, so ``{run_date}`` in any parameter is replaced by the
  run's date (``--run_date=YYYY-MM-DD``, or today in UTC shifted by ``--run_date_offset_days``, e.g. -1 to
  process yesterday's input folder); the pipeline gets ``--run_date`` when its options declare it.
- The launcher passes every parameter as ``--name=value``; boolean flags arrive as ``--flag=true|false``.
- Dataflow has already checked the parameter names against metadata.json, and the launcher adds its own
  environment flags, so an unknown flag is logged here rather than refused; input that matches nothing and a
  model that does not resolve still stop the launch before any worker starts (``pipelines.preflight``).
It submits the job and returns without waiting: the launcher VM is not meant to babysit a batch job. The run
report (report.html) is the job's own last step, after it publishes, so nothing here waits for it either.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from collections.abc import Sequence

RUN_DATE_PLACEHOLDER = "{run_date}"
LAUNCH_FLAGS = ("run_date", "run_date_offset_days")
# The template's validation of the launch flags (metadata.json).
LAUNCH_PATTERNS = {"run_date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "run_date_offset_days": r"^-?[0-9]+$"}


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Parameters consumed here (not by the pipeline's options); metadata.json lists them too."""
    parser.add_argument(
        "--run_date",
        default=None,
        help="The run's date, YYYY-MM-DD: picks the BigQuery partition and replaces {run_date} in the other "
        "parameters (default: today in UTC plus --run_date_offset_days).",
    )
    parser.add_argument(
        "--run_date_offset_days",
        type=int,
        default=0,
        help="Days added to today's UTC date when --run_date is not given; -1 processes yesterday's data.",
    )


def resolve_run_date(run_date: str | None, offset_days: int, today: datetime.date) -> datetime.date:
    from common.settings import parse_date

    if run_date:
        return parse_date("run_date", run_date)
    return today + datetime.timedelta(days=offset_days)


def expand_launch_args(
    argv: Sequence[str], bool_flags: Sequence[str], pipeline_takes_run_date: bool, today: datetime.date
) -> list[str]:
    """Launcher argv -> pipeline argv: dates resolved, ``--flag=true|false`` turned into argparse form."""
    parser = argparse.ArgumentParser(add_help=False)
    add_launch_arguments(parser)
    launch, rest = parser.parse_known_args(list(argv))
    run_date = resolve_run_date(launch.run_date, launch.run_date_offset_days, today)
    out = []
    for token in rest:
        token = token.replace(RUN_DATE_PLACEHOLDER, run_date.isoformat())
        name, sep, value = token.partition("=")
        if sep and name.lstrip("-") in bool_flags:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{name} takes true or false, got {value!r}")
            if value.lower() == "true":
                out.append(name)
            continue
        out.append(token)
    if pipeline_takes_run_date:
        out.append(f"--run_date={run_date.isoformat()}")
    return out


def pipeline_flags() -> tuple[list[str], bool]:
    """The pipeline's boolean flags, and whether it declares --run_date (read from its settings)."""
    from common.settings import declared
    from pipelines.options import JOB_GROUPS

    settings = [item for group in JOB_GROUPS for item in declared(group)]
    bools = [item.flag for item in settings if item.kind is bool]
    return bools, any(item.flag == "run_date" for item in settings)


def main(argv: Sequence[str] | None = None) -> None:
    import apache_beam as beam

    from pipelines.batch_inference import parse_args
    from pipelines.pipeline import build_pipeline
    from pipelines.preflight import preflight
    from transforms.registry import make_task_set

    logging.getLogger().setLevel(logging.INFO)
    bools, takes_run_date = pipeline_flags()
    args = expand_launch_args(
        sys.argv[1:] if argv is None else argv,
        bools,
        takes_run_date,
        datetime.datetime.now(datetime.timezone.utc).date(),
    )
    options, config = parse_args(args, strict=False)
    tasks = make_task_set(config)
    preflight(config, tasks)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config, progress=False, tasks=tasks)
    pipeline.run()


if __name__ == "__main__":
    main()
