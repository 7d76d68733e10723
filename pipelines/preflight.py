"""Checks a run makes before any worker starts: every {field} a task's prompt names is in the input.

A field no sampled record has is a mistake in the task file (or in --text_field/--id_field), so the run stops
with a message naming the file, the task and the key. A field only some records lack is a property of those
records: each of them becomes a dead letter that says which field was missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.records import Record
from inference.requests import TEXT_FIELD
from pipelines.io import RecordSpec
from pipelines.options import JobConfig
from pipelines.plan import read_sample
from transforms.task import TaskSet
from transforms.taskfile import TaskFileError, where

SAMPLE_RECORDS = 20
ALWAYS_PRESENT = (TEXT_FIELD, "id")  # every record has its text and id


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


def preflight(config: JobConfig, tasks: TaskSet) -> None:
    """The checks above, on the first records of the job's input."""
    if not any(task.slots() - set(ALWAYS_PRESENT) for task in tasks.tasks):
        return
    sample = read_sample(config.input, RecordSpec.of(config), SAMPLE_RECORDS, config.input_format)
    check_prompt_fields(tasks, sample.records, config.task_file or f"--task {config.task}")
