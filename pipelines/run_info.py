"""What a published output folder was made by: the run's input, model and tasks, kept in ``_PUBLISHED.json``.

The run report is made from the published files alone (by the job's last step, or later by
``make report OUTPUT=...``), so the folder must say what its columns mean: which tasks there are and their
column names, their label sets, where each task's gold labels are in the input (``--gold_field`` / ``gold:``),
its ``min_confidence``, whether it explains, and how to read the input again for sample rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.options import JobConfig
from transforms.classify import ClassifyTask
from transforms.task import TaskSet

CLASSIFY, GENERATE = "classify", "generate"


@dataclass(frozen=True)
class TaskInfo:
    """One task's columns and what the report needs to read them."""

    name: str
    kind: str  # classify | generate
    prefix: str  # "" for a --task shortcut's columns, "<name>_" for a task file's
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    min_confidence: float | None = None
    gold_field: str | None = None
    explain: bool = False
    confidence_temperature: float = 1.0
    output: str = ""  # generate: the column holding the text

    def column(self, name: str) -> str:
        return self.prefix + name


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    input: str
    input_format: str
    text_field: str
    id_field: str
    max_record_bytes: int
    on_overflow: str
    model: str
    output_format: str
    output_table: str | None
    tasks: tuple[TaskInfo, ...]

    @classmethod
    def of(cls, config: JobConfig, tasks: TaskSet) -> RunInfo:
        return cls(
            run_id=config.run_id,
            input=config.input,
            input_format=config.input_format,
            text_field=config.text_field,
            id_field=config.id_field,
            max_record_bytes=config.max_record_bytes,
            on_overflow=config.on_overflow,
            model=config.model,
            output_format=config.output_format,
            output_table=config.output_table,
            tasks=task_infos(tasks),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunInfo:
        """Read back; keys this version does not know (a newer one wrote them) are left out."""
        tasks = tuple(
            TaskInfo(**{**_known(TaskInfo, task), "labels": tuple(task.get("labels", ()))})
            for task in raw.get("tasks", ())
        )
        return cls(**{**_known(cls, raw), "tasks": tasks})


def _known(kind: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in raw.items() if k in names}


def task_infos(tasks: TaskSet) -> tuple[TaskInfo, ...]:
    out = []
    for task in tasks.tasks:
        prefix = f"{task.name}_" if tasks.prefixed else ""
        if isinstance(task, ClassifyTask):
            out.append(
                TaskInfo(
                    task.name,
                    CLASSIFY,
                    prefix,
                    labels=tuple(label.name for label in task.labels),
                    multi_label=task.multi_label,
                    min_confidence=task.min_confidence,
                    gold_field=tasks.gold_fields.get(task.name),
                    explain=task.explains,
                    confidence_temperature=task.confidence_temperature,
                )
            )
        else:
            out.append(TaskInfo(task.name, GENERATE, prefix, output=getattr(task, "output", "")))
    return tuple(out)
