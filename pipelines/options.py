"""The job's settings: what this layer declares (input, output, run), joined with the task's and the model's
into one validated ``JobConfig``; the Beam ``PipelineOptions`` subclass and the CLI's flags are derived from
the three declarations (``common.settings``).

Beam's own flags (--runner, --project, --region, ...) pass through untouched; these are the job's.
"""

from __future__ import annotations

import argparse
import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from common.settings import add_arguments, problems, raise_problems, setting, values_from
from inference.settings import ModelSettings
from transforms.settings import TaskSettings

OUTPUT_FORMATS = ("parquet", "jsonl", "bigquery")
INPUT_FORMATS = ("auto", "jsonl", "parquet")
SKIPPED_ROWS = ("carry", "drop")

GCS_PATH = r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/.*)?$"
GCS_PATTERN = r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+$"
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
BQ_TABLE = r"^[a-z][-a-z0-9]{4,28}[a-z0-9][:.][A-Za-z0-9_]+[.][-A-Za-z0-9_]+$"
TOKEN = r"^[-A-Za-z0-9_.:]+$"

# The CLI shows the task's label set as --labels; Beam's GoogleCloudOptions already owns that flag (Dataflow
# job labels, key=value), so it is renamed to --task_labels before Beam parses argv. Dataflow job labels stay
# available as --label key=value.
LABELS_FLAG = "--labels"
TASK_LABELS_FLAG = "--task_labels"
CLI_ALIASES = {TASK_LABELS_FLAG[2:]: LABELS_FLAG[2:]}


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Where records come from and go to, and the run's identity."""

    input: str = setting(
        help="Records to read: a JSONL or Parquet file, folder glob or gs:// pattern, "
        "e.g. sample.jsonl or gs://bucket/reviews/*.jsonl.",
        pattern=GCS_PATTERN,
    )
    output: str = setting(
        help="Output folder (local or gs://): results-*.parquet|jsonl and errors-*.jsonl.", pattern=GCS_PATH
    )
    text_field: str = setting("text", help="Input field holding the text to process.", pattern=FIELD_NAME)
    id_field: str = setting(
        "id",
        help="Input field holding the record id (stringified); records without it get a stable hash "
        "of their content as id.",
        pattern=FIELD_NAME,
    )
    input_format: str = setting(
        "auto", choices=INPUT_FORMATS, help="auto: by extension (.parquet is Parquet, anything else JSON Lines)."
    )
    output_format: str = setting(
        "parquet",
        choices=OUTPUT_FORMATS,
        help="parquet (typed columns, declared schema), jsonl, or bigquery (rows go to --output_table; "
        "dead letters still land in --output as errors-*.jsonl).",
    )
    output_table: str | None = setting(
        None,
        metavar="PROJECT:DATASET.TABLE",
        pattern=BQ_TABLE,
        help="--output_format bigquery: the results table, partitioned by run date; a rerun replaces its "
        "date's partition. Dead letters also go to TABLE_errors.",
    )
    run_date: datetime.date | None = setting(
        None,
        metavar="YYYY-MM-DD",
        help="--output_format bigquery: the date partition this run writes (default: today, UTC).",
    )
    max_record_bytes: int = setting(
        1_000_000,
        minimum=1,
        help="Input lines/rows larger than this: their text is cut to fit (truncated=true) or, with "
        "--on_overflow error, they become dead letters.",
    )
    num_shards: int = setting(0, minimum=0, help="Output files per kind (0: the runner decides).")
    max_error_rate: float = setting(
        0.1,
        minimum=0.0,
        maximum=1.0,
        help="Fail the job, publishing nothing and keeping the previous output, when dead letters / input "
        "records exceed this fraction (default 0.1: a few bad lines pass, a systematic failure such as a "
        "wrong --text_field does not); 1 turns the check off.",
    )
    run_id: str = setting("", pattern=TOKEN, help="Lineage id written to every row (default: UTC time + random).")
    skip_done: str | None = setting(
        None,
        metavar="PATH",
        pattern=GCS_PATH,
        help="An earlier run's output folder (local or gs://): records whose result is already there for the "
        "same content, task definition and model (the result_key column) are not run again.",
    )
    skipped_rows: str = setting(
        "carry",
        choices=SKIPPED_ROWS,
        help="--skip_done: carry the skipped records' earlier rows into this run's output (a complete folder), "
        "or drop them (the output holds only what this run computed).",
    )

    @staticmethod
    def run_problems(settings: RunSettings) -> list[str]:
        """Checks that span several run settings."""
        found = [] if settings.text_field else ["--text_field must name a field"]
        if settings.output_format != "bigquery":
            return found + (["--output_table goes with --output_format bigquery"] if settings.output_table else [])
        if not settings.output_table:
            return [*found, "--output_format bigquery needs --output_table PROJECT:DATASET.TABLE"]
        from pipelines.bigquery import TableRef

        try:
            TableRef.parse(settings.output_table)
        except ValueError as err:
            return [*found, str(err)]
        return found


JOB_GROUPS = (RunSettings, TaskSettings, ModelSettings)  # flag order: run, task, model


def new_run_id() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, kw_only=True)
class JobConfig(ModelSettings, TaskSettings, RunSettings):
    """Every setting of a job, validated together; ``ModelSettings.of(config)`` is what the handler gets."""

    def __post_init__(self) -> None:
        found = [item for group in JOB_GROUPS for item in problems(self, group)]
        if not found:  # cross-setting checks assume each setting is valid on its own
            found = RunSettings.run_problems(self) + TaskSettings.task_problems(self)
        raise_problems(found)
        if not self.run_id:
            object.__setattr__(self, "run_id", new_run_id())
        if self.run_date is None:
            object.__setattr__(self, "run_date", datetime.datetime.now(datetime.timezone.utc).date())

    @classmethod
    def from_flags(cls, flags: Any) -> JobConfig:
        """From parsed flags: an argparse namespace or Beam's options view."""
        values: dict[str, Any] = {}
        for group in JOB_GROUPS:
            values.update(values_from(flags, group))
        return cls(**values)

    @classmethod
    def from_options(cls, options: PipelineOptions) -> JobConfig:
        return cls.from_flags(options.view_as(GemmaOptions))


class GemmaOptions(PipelineOptions):
    """Flags of ``python -m pipelines.batch_inference``, as Beam parses them."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        for group in JOB_GROUPS:
            add_arguments(parser, group)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's flags as the CLI's --help shows them (--labels rather than Beam's --task_labels)."""
    for group in JOB_GROUPS:
        add_arguments(parser, group, aliases=CLI_ALIASES)


def rename_labels_flag(argv: list[str]) -> list[str]:
    """``--labels X`` / ``--labels=X`` -> ``--task_labels ...`` so Beam's own --labels does not take it."""
    out = []
    for token in argv:
        if token == LABELS_FLAG:
            out.append(TASK_LABELS_FLAG)
        elif token.startswith(LABELS_FLAG + "="):
            out.append(TASK_LABELS_FLAG + token[len(LABELS_FLAG) :])
        else:
            out.append(token)
    return out
