"""The pipeline's flags (a Beam PipelineOptions subclass) and the validated job settings built from them.

Beam's own flags (--runner, --project, --region, ...) pass through untouched; these are the job's.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions

TASKS = ("sentiment", "classify", "summarize")
OUTPUT_FORMATS = ("parquet", "jsonl", "bigquery")
INPUT_FORMATS = ("auto", "jsonl", "parquet")
PROMPT_STYLES = ("auto", "completion", "chat")
OVERFLOW_POLICIES = ("truncate", "error")


# Beam's GoogleCloudOptions already owns --labels (Dataflow job labels, key=value). The CLI keeps the
# contract's --labels for the task's label set by renaming it to --task_labels before Beam parses argv;
# Dataflow job labels stay available as --label key=value.
LABELS_FLAG = "--labels"
TASK_LABELS_FLAG = "--task_labels"


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


class GemmaOptions(PipelineOptions):
    """Flags of ``python -m pipelines.batch_inference``."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add_job_arguments(parser, labels_flag=TASK_LABELS_FLAG)


def add_job_arguments(parser, labels_flag: str = LABELS_FLAG) -> None:
    """The job's flags, on Beam's parser (labels as --task_labels) or on the CLI's --help parser."""
    add = parser.add_argument
    add("--input", help="Records to read: a JSONL or Parquet file, folder glob or gs:// pattern, "
        "e.g. sample.jsonl or gs://bucket/reviews/*.jsonl.")  # fmt: skip
    add("--output", help="Output folder (local or gs://): results-*.parquet|jsonl and errors-*.jsonl.")
    add("--task", choices=TASKS, default="sentiment",
        help="sentiment: positive/negative/neutral with confidence; classify: one of --labels; "
        "summarize: a one-sentence summary.")  # fmt: skip
    add(labels_flag, dest="task_labels", default=None, metavar="A,B,C",
        help="Comma-separated label set for --task classify, e.g. billing,bug,other. "
        "(Dataflow job labels: --label key=value.)")  # fmt: skip
    add("--model", default="embedded",
        help="'embedded' (Gemma 3 270M shipped with the package), a local HF checkpoint folder, "
        "a .gguf file, or a gs:// checkpoint folder (copied once per worker).")  # fmt: skip
    add("--text_field", default="text", help="Input field holding the text to process.")
    add("--id_field", default="id",
        help="Input field holding the record id (stringified); records without it get a stable hash "
        "of their content as id.")  # fmt: skip
    add("--input_format", choices=INPUT_FORMATS, default="auto",
        help="auto: by extension (.parquet is Parquet, anything else JSON Lines).")  # fmt: skip
    add("--output_format", choices=OUTPUT_FORMATS, default="parquet",
        help="parquet (typed columns, declared schema), jsonl, or bigquery (rows go to --output_table; "
        "dead letters still land in --output as errors-*.jsonl).")  # fmt: skip
    add("--output_table", default=None, metavar="PROJECT:DATASET.TABLE",
        help="--output_format bigquery: the results table, partitioned by run date; a rerun replaces its "
        "date's partition. Dead letters also go to TABLE_errors.")  # fmt: skip
    add("--run_date", default=None, metavar="YYYY-MM-DD",
        help="--output_format bigquery: the date partition this run writes (default: today, UTC).")  # fmt: skip
    add("--max_new_tokens", type=int, default=64, help="summarize: most tokens generated per record.")
    add("--temperature", type=float, default=0.0, help="summarize: 0 is greedy (deterministic).")
    add("--seed", type=int, default=None, help="summarize: sampling seed when --temperature > 0.")
    add("--prompt_style", choices=PROMPT_STYLES, default="auto",
        help="auto: Gemma's turn format if the checkpoint has a chat template (instruction-tuned), "
        "else few-shot completion prompts (base models).")  # fmt: skip
    add("--no_calibration", action="store_true",
        help="sentiment/classify: use raw label scores instead of dividing out the label prior "
        "measured on a content-free input.")  # fmt: skip
    add("--batch_max_tokens", type=int, default=16384,
        help="Estimated tokens (prompt + output) per RunInference batch.")  # fmt: skip
    add("--max_prompt_tokens", type=int, default=None,
        help="Cap on prompt tokens per record (default: the model's context minus the output).")  # fmt: skip
    add("--on_overflow", choices=OVERFLOW_POLICIES, default="truncate",
        help="A record over --max_record_bytes or a prompt over --max_prompt_tokens: truncate the "
        "record's text (truncated=true) or dead-letter it.")  # fmt: skip
    add("--max_record_bytes", type=int, default=1_000_000,
        help="Input lines/rows larger than this: their text is cut to fit (truncated=true) or, with "
        "--on_overflow error, they become dead letters.")  # fmt: skip
    add("--device", default=None, help="Torch device for the engine (default: cuda if present, else cpu).")
    add(
        "--dtype",
        default=None,
        help="Engine dtype, e.g. bfloat16 or float32 (default: best for the device).",
    )
    add("--engine_max_batch_tokens", type=int, default=None,
        help="Engine token budget per forward pass (default: the engine's).")  # fmt: skip
    add("--model_copies", type=int, default=1,
        help="Models per machine; each SDK process talks to them through Beam's shared-model proxy. "
        "0 loads one model in every SDK process instead.")  # fmt: skip
    add("--num_shards", type=int, default=0, help="Output files per kind (0: the runner decides).")
    add("--max_error_rate", type=float, default=None,
        help="Fail the job (and publish nothing) when dead letters / input records exceed this fraction, "
        "e.g. 0.01; default: no limit.")  # fmt: skip
    add("--run_id", default=None, help="Lineage id written to every row (default: UTC time + random).")


def new_run_id() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class JobConfig:
    """Validated job settings; everything the pipeline builder needs besides Beam's own options."""

    input: str
    output: str
    task: str = "sentiment"
    labels: tuple[str, ...] = ()
    model: str = "embedded"
    text_field: str = "text"
    id_field: str = "id"
    input_format: str = "auto"
    output_format: str = "parquet"
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    prompt_style: str = "auto"
    calibrate: bool = True
    batch_max_tokens: int = 16384
    max_prompt_tokens: int | None = None
    on_overflow: str = "truncate"
    max_record_bytes: int = 1_000_000
    device: str | None = None
    dtype: str | None = None
    engine_max_batch_tokens: int | None = None
    model_copies: int = 1
    num_shards: int = 0
    max_error_rate: float | None = None
    output_table: str | None = None
    run_date: datetime.date | None = None  # BigQuery partition; None: today (UTC)
    run_id: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not self.input:
            problems.append("--input is required (a JSONL/Parquet path or pattern)")
        if not self.output:
            problems.append("--output is required (a folder for results-* and errors-* files)")
        if self.task not in TASKS:
            problems.append(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "classify" and len(self.labels) < 2:
            problems.append("--task classify needs --labels with at least two labels, e.g. --labels a,b,c")
        if self.output_format not in OUTPUT_FORMATS:
            problems.append(f"--output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.input_format not in INPUT_FORMATS:
            problems.append(f"--input_format must be one of {', '.join(INPUT_FORMATS)}")
        if self.prompt_style not in PROMPT_STYLES:
            problems.append(f"--prompt_style must be one of {', '.join(PROMPT_STYLES)}")
        if self.on_overflow not in OVERFLOW_POLICIES:
            problems.append(f"--on_overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        for flag, value, low in (
            ("--max_new_tokens", self.max_new_tokens, 1),
            ("--batch_max_tokens", self.batch_max_tokens, 1),
            ("--max_record_bytes", self.max_record_bytes, 1),
            ("--model_copies", self.model_copies, 0),
            ("--num_shards", self.num_shards, 0),
        ):
            if value < low:
                problems.append(f"{flag} must be >= {low}, got {value}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            problems.append(f"--max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if self.max_error_rate is not None and not 0.0 <= self.max_error_rate <= 1.0:
            problems.append(f"--max_error_rate must be a fraction between 0 and 1, got {self.max_error_rate}")
        if self.temperature < 0:
            problems.append(f"--temperature must be >= 0, got {self.temperature}")
        if not self.text_field:
            problems.append("--text_field must name a field")
        problems.extend(self._bigquery_problems())
        if problems:
            raise ValueError("invalid options:\n  " + "\n  ".join(problems))
        if not self.run_id:
            object.__setattr__(self, "run_id", new_run_id())
        if self.run_date is None:
            object.__setattr__(self, "run_date", datetime.datetime.now(datetime.timezone.utc).date())

    def _bigquery_problems(self) -> list[str]:
        if self.output_format != "bigquery":
            return ["--output_table goes with --output_format bigquery"] if self.output_table else []
        if not self.output_table:
            return ["--output_format bigquery needs --output_table PROJECT:DATASET.TABLE"]
        from pipelines.bigquery import TableRef

        try:
            TableRef.parse(self.output_table)
        except ValueError as err:
            return [str(err)]
        return []

    @classmethod
    def from_options(cls, options: PipelineOptions) -> JobConfig:
        o = options.view_as(GemmaOptions)
        labels: tuple[str, ...] = ()
        if o.task_labels:
            labels = tuple(x.strip() for x in o.task_labels.split(",") if x.strip())
        return cls(
            input=o.input or "",
            output=o.output or "",
            task=o.task,
            labels=labels,
            model=o.model,
            text_field=o.text_field,
            id_field=o.id_field,
            input_format=o.input_format,
            output_format=o.output_format,
            max_new_tokens=o.max_new_tokens,
            temperature=o.temperature,
            seed=o.seed,
            prompt_style=o.prompt_style,
            calibrate=not o.no_calibration,
            batch_max_tokens=o.batch_max_tokens,
            max_prompt_tokens=o.max_prompt_tokens,
            on_overflow=o.on_overflow,
            max_record_bytes=o.max_record_bytes,
            device=o.device,
            dtype=o.dtype,
            engine_max_batch_tokens=o.engine_max_batch_tokens,
            model_copies=o.model_copies,
            num_shards=o.num_shards,
            max_error_rate=o.max_error_rate,
            output_table=o.output_table,
            run_date=_parse_run_date(o.run_date),
            run_id=o.run_id or "",
        )


def _parse_run_date(value: str | None) -> datetime.date | None:
    if not value:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"invalid options:\n  --run_date must be YYYY-MM-DD, got {value!r}") from err
