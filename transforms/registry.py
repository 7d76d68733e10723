"""Task kinds and the --task shortcuts. A kind (classify, generate, extract) builds a task from its task-file entry; a
shortcut (sentiment, classify, summarize) is a task file shipped with the package, with the shortcut flags
(--labels, --no_calibration, --max_new_tokens, ...) written over it. The CLI's choices and help, the Flex
Template's parameter, ``plan`` and the pipeline all read these tables, so a task is listed once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.files import read_bytes
from transforms.classify import ClassifyTask, parse_labels
from transforms.extract import ExtractTask
from transforms.generate import GenerateTask
from transforms.task import Task, TaskSet
from transforms.taskfile import TaskFile, TaskFileError, load_task_file, parse_task_file, where

if TYPE_CHECKING:
    from transforms.settings import TaskSettings

SHIPPED = Path(__file__).resolve().parent / "tasks"
Reader = Callable[[str], bytes]

KINDS: dict[str, Callable[[Mapping[str, Any], TaskFile, Reader], Task]] = {
    "classify": lambda raw, file, read: ClassifyTask.from_spec(raw, file.source, read),
    "generate": lambda raw, file, read: GenerateTask.from_spec(raw, file.source, read, file.input_label),
    "extract": lambda raw, file, read: ExtractTask.from_spec(raw, file.source, read),
}


@dataclass(frozen=True)
class Shortcut:
    file: str  # in transforms/tasks/
    description: str
    needs_labels: bool = False


SHORTCUTS: dict[str, Shortcut] = {
    "sentiment": Shortcut("sentiment.yaml", "positive/negative/neutral with confidence"),
    "classify": Shortcut("classify.yaml", "one of --labels", needs_labels=True),
    "summarize": Shortcut("summarize.yaml", "a one-sentence summary"),
}


def task_names() -> tuple[str, ...]:
    return tuple(SHORTCUTS)


def tasks_help() -> str:
    return "; ".join(f"{name}: {shortcut.description}" for name, shortcut in SHORTCUTS.items()) + "."


def build_task_set(file: TaskFile, read: Reader = read_bytes, prefixed: bool = True) -> TaskSet:
    """Every task of a checked task file, built by its kind (which checks the kind's own rules)."""
    tasks = tuple(KINDS[raw["kind"]](raw, file, read) for raw in file.tasks)
    gold = {raw["name"]: raw["gold"] for raw in file.tasks if "gold" in raw}
    for raw in file.tasks:
        if "gold" in raw and raw.get("multi_label"):
            raise TaskFileError(
                f"{where(file.source, raw['name'], 'gold')}: gold labels are scored for single-label tasks; "
                "remove gold: or multi_label: true"
            )
    return TaskSet(tasks, file.input_label, prefixed=prefixed, gold_fields=gold, adapter=file.adapter)


def with_gold_field(file: TaskFile, field: str) -> TaskFile:
    """--gold_field for a task file: it names the known label of the file's one classify task."""
    classify = [n for n, raw in enumerate(file.tasks) if raw["kind"] == "classify"]
    if len(classify) != 1:
        raise TaskFileError(
            f"{file.source}: --gold_field scores a file's one classify task, and this file has {len(classify)}; "
            "write gold: FIELD on each classify task instead"
        )
    tasks = list(file.tasks)
    tasks[classify[0]] = {**tasks[classify[0]], "gold": field}
    return dataclasses.replace(file, tasks=tuple(tasks))


def _shortcut_overrides(kind: str, settings: TaskSettings) -> dict[str, Any]:
    """What the shortcut flags write over a shipped task."""
    if kind == "classify":
        overrides: dict[str, Any] = {"calibrate": settings.calibrate, "explain": settings.explain}
        if settings.confidence_temperature != 1.0:
            overrides["confidence_temperature"] = settings.confidence_temperature
        if settings.labels:
            overrides["labels"] = list(settings.labels)
        if settings.gold_field:
            overrides["gold"] = settings.gold_field
        return overrides
    scored = (
        ("--explain", settings.explain),
        ("--gold_field", settings.gold_field),
        ("--confidence_temperature", settings.confidence_temperature != 1.0),
    )
    scored_only = [flag for flag, on in scored if on]
    if scored_only:
        verb = "work" if len(scored_only) > 1 else "works"
        raise ValueError(f"{' and '.join(scored_only)} {verb} with the scored tasks (sentiment, classify)")
    return {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature, "seed": settings.seed}


def shortcut_task_set(name: str, settings: TaskSettings) -> TaskSet:
    """A --task shortcut: its shipped file with the shortcut flags applied; today's unprefixed columns."""
    import yaml

    shortcut = SHORTCUTS[name]
    if shortcut.needs_labels:
        parse_labels(settings.labels)  # ValueError: "need at least two labels, e.g. --labels ..."
    path = SHIPPED / shortcut.file
    raw = yaml.safe_load(path.read_text())
    task = raw["tasks"][0]
    task.update({k: v for k, v in _shortcut_overrides(task["kind"], settings).items() if v is not None})
    return build_task_set(parse_task_file(raw, f"--task {name} ({path.name})"), prefixed=False)


def shortcut(name: str, **flags: Any) -> TaskSet:
    """A shortcut's task set from Python, e.g. ``shortcut("classify", labels=("bug", "billing"))``."""
    from transforms.settings import TaskSettings

    return shortcut_task_set(name, TaskSettings(task=name, **flags))


def make_task_set(settings: TaskSettings, read: Reader = read_bytes) -> TaskSet:
    """The tasks a job runs: its --task_file, or its --task shortcut. ValueError says what to fix."""
    if settings.task_file:
        file = load_task_file(settings.task_file, read)
        return build_task_set(with_gold_field(file, settings.gold_field) if settings.gold_field else file, read)
    if settings.task not in SHORTCUTS:
        raise ValueError(f"unknown task {settings.task!r}; expected one of {', '.join(SHORTCUTS)} or --task_file")
    return shortcut_task_set(settings.task, settings)


__all__ = ["KINDS", "SHORTCUTS", "TaskFileError", "build_task_set", "make_task_set", "shortcut", "task_names"]
