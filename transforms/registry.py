"""The task registry: each task name maps to its class and a one-line description. The CLI's choices and
help, the Flex Template's parameter, ``plan`` and the pipeline all read it, so a task is listed once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transforms.classify import ClassifyTask
from transforms.sentiment import SentimentTask
from transforms.summarize import SummarizeTask
from transforms.task import Task

if TYPE_CHECKING:
    from transforms.settings import TaskSettings


@dataclass(frozen=True)
class TaskKind:
    build: Callable[[TaskSettings], Task]
    description: str


TASKS: dict[str, TaskKind] = {
    "sentiment": TaskKind(SentimentTask.from_settings, "positive/negative/neutral with confidence"),
    "classify": TaskKind(ClassifyTask.from_settings, "one of --labels"),
    "summarize": TaskKind(SummarizeTask.from_settings, "a one-sentence summary"),
}


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def tasks_help() -> str:
    return "; ".join(f"{name}: {kind.description}" for name, kind in TASKS.items()) + "."


def make_task(settings: TaskSettings) -> Task:
    """The task the settings name, built from them; ValueError says what is missing or wrong."""
    kind = TASKS.get(settings.task)
    if kind is None:
        raise ValueError(f"unknown task {settings.task!r}; expected one of {', '.join(TASKS)}")
    return kind.build(settings)
