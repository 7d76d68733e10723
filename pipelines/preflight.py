"""Checks a run makes before any worker starts, so a run that cannot work writes nothing.

Input that matches no file and a model that does not resolve are the user's to fix: each becomes one
``UserInputError`` line (exit 2), not a traceback from a worker after the job has started. The model check is
cheap (``gemma_ops.checkpoints.check_model``): file headers and listings, never weights.

Every {field} a task's prompt names must be in the input: a field no sampled record has is a mistake in the
task file (or in --text_field/--id_field), so the run stops with a message naming the file, the task and the
key. A field only some records lack is a property of those records: each of them becomes a dead letter that
says which field was missing. A gold-label field (--gold_field, gold:) must be in the input too; a record
without one is not scored.
"""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from common.errors import UserInputError
from common.records import Record
from inference.requests import TEXT_FIELD
from pipelines.io import RecordSpec
from pipelines.options import JobConfig
from pipelines.plan import read_sample
from transforms.task import TaskSet
from transforms.taskfile import TaskFileError, where

SAMPLE_RECORDS = 20
ALWAYS_PRESENT = (TEXT_FIELD, "id")  # every record has its text and id


def check_input(pattern: str) -> int:
    """The number of files ``pattern`` matches; UserInputError when it matches none or cannot be listed."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except OSError as err:  # Beam's BeamIOError: a missing bucket, no permission
        raise UserInputError(f"--input {pattern} cannot be listed: {err}") from err
    if not matched:
        raise UserInputError(
            f"--input {pattern} matches no files; check the path (quote globs such as 'data/*.jsonl' so the "
            "shell passes them through)"
        )
    return len(matched)


def check_model(model: str) -> None:
    """UserInputError when --model does not resolve (nothing is loaded or copied)."""
    from gemma_ops.checkpoints import check_model as check_checkpoint

    try:
        check_checkpoint(model)
    except FileNotFoundError as err:
        raise UserInputError(str(err)) from err


def check_adapter(model: str, adapter: str) -> None:
    """AdapterError (a ValueError: exit 2) when --adapter cannot run on a local --model: its files, shapes and
    recorded base hash. A gs:// model is checked when the workers load it (before they answer any record)."""
    from gemma_ops.adapters.check import check_adapter as check_folder
    from gemma_ops.checkpoints import resolve_adapter, resolve_model

    if model.startswith("gs://"):
        return
    checkpoint = resolve_model(model)
    check_folder(resolve_adapter(adapter), checkpoint, checkpoint.name if model != "embedded" else model, adapter)


def check_prompt_fields(tasks: TaskSet, records: Sequence[Record], source: str) -> None:
    """Raise TaskFileError for a prompt field that none of ``records`` has."""
    seen = set().union(*(record.extra for record in records)) if records else set()
    for task in tasks.tasks:
        for name in sorted(task.slots() - set(ALWAYS_PRESENT)):
            if name not in seen:
                fields = ", ".join(sorted(seen)) or "none besides text and id"
                raise TaskFileError(
                    f"{where(source, task.name, 'prompt')}: names the field {{{name}}}, which none of the first "
                    f"{len(records)} input records has (fields: {fields}); use one of those, or {{text}} for the "
                    "record's text"
                )


def check_gold_fields(tasks: TaskSet, records: Sequence[Record], source: str) -> None:
    """Raise TaskFileError for a gold-label field (--gold_field, gold:) that none of ``records`` has."""
    seen = set().union(*(record.extra for record in records)) if records else set()
    for name, field in sorted(tasks.gold_fields.items()):
        if field not in seen:
            fields = ", ".join(sorted(seen)) or "none besides text and id"
            raise TaskFileError(
                f"{where(source, name, 'gold')}: the gold label field {field!r} is in none of the first "
                f"{len(records)} input records (fields: {fields}); name the field that holds each record's label"
            )


def preflight(config: JobConfig, tasks: TaskSet) -> None:
    """Everything that must hold before the job starts; raises UserInputError (TaskFileError is one) on the
    first problem."""
    check_input(config.input)
    check_model(config.model)
    if config.adapter:
        check_adapter(config.model, config.adapter)
    if not tasks.gold_fields and not any(task.slots() - set(ALWAYS_PRESENT) for task in tasks.tasks):
        return
    sample = read_sample(config.input, RecordSpec.of(config), SAMPLE_RECORDS, config.input_format)
    source = config.task_file or f"--task {config.task}"
    check_prompt_fields(tasks, sample.records, source)
    check_gold_fields(tasks, sample.records, source)
