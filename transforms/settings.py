"""The task settings of a job, declared once: a task file, or a --task shortcut and the flags that tune it."""

from __future__ import annotations

from dataclasses import dataclass

from common.settings import INTEGER, problems, raise_problems, setting
from transforms.registry import make_task_set, task_names, tasks_help

LABEL_LIST = r"^[^,]+(,[^,]+)+$"
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


@dataclass(frozen=True, kw_only=True)
class TaskSettings:
    task_file: str | None = setting(
        None,
        metavar="FILE",
        pattern=r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+$",
        help="YAML (or JSON) file, local or gs://, describing one or more tasks (classify, generate, extract) to run "
        "over every record in one pass; each task's columns are prefixed with its name. Replaces --task.",
    )
    task: str = setting(
        "sentiment",
        choices=task_names,
        help=tasks_help() + " (Shortcuts for task files shipped with the package; ignored with --task_file.)",
    )
    # Beam's GoogleCloudOptions owns --labels (Dataflow job labels): on Beam's parser this is --task_labels,
    # and the CLI renames --labels to it (pipelines.options.rename_labels_flag).
    labels: tuple[str, ...] = setting(
        (),
        flag="task_labels",
        metavar="A,B,C",
        pattern=LABEL_LIST,
        help="Comma-separated label set for --task classify, e.g. billing,bug,other. "
        "(Dataflow job labels: --label key=value.)",
    )
    max_new_tokens: int = setting(64, minimum=1, help="summarize: most tokens generated per record.")
    temperature: float = setting(0.0, minimum=0.0, help="summarize: 0 is greedy (deterministic).")
    seed: int | None = setting(None, pattern=INTEGER, help="summarize: sampling seed when --temperature > 0.")
    calibrate: bool = setting(
        True,
        off_flag="no_calibration",
        help="sentiment/classify: use raw label scores instead of dividing out the label prior "
        "measured on a content-free input.",
    )
    confidence_temperature: float = setting(
        1.0,
        minimum=0.01,
        maximum=100.0,
        help="sentiment/classify: divide the label log-odds by this before the softmax (temperature scaling) so "
        "that confidence matches accuracy; the run report fits it on records with --gold_field. Task files: "
        "confidence_temperature: on a classify task.",
    )
    explain: bool = setting(
        False,
        help="sentiment/classify: add an evidence column, the 3 words or phrases whose removal most lowers the "
        "chosen label's probability, each with that drop (occlusion: up to 32 extra scored prompts per record, "
        "each about the record's length). Task files: explain: true on a classify task.",
    )
    gold_field: str | None = setting(
        None,
        metavar="FIELD",
        pattern=FIELD_NAME,
        help="Input field holding each record's known label: the run report (report.html) and the summary give "
        "accuracy, macro-F1, calibration error (ECE) and coverage against accuracy for min_confidence. With "
        "--task_file it scores the file's one classify task (several: gold: FIELD on each).",
    )

    def __post_init__(self) -> None:
        raise_problems(problems(self, TaskSettings) + TaskSettings.task_problems(self))

    @staticmethod
    def task_problems(settings: TaskSettings) -> list[str]:
        """What keeps the tasks from being built with these settings (a broken task file, classify without
        labels, a shortcut flag beside a task file)."""
        if settings.task_file:
            flags = (
                ("--labels", bool(settings.labels)),
                ("--no_calibration", not settings.calibrate),
                ("--explain", settings.explain),
                ("--confidence_temperature", settings.confidence_temperature != 1.0),
            )
            shortcut_flags = [f for f, set_ in flags if set_]
            if shortcut_flags:
                return [
                    f"{', '.join(shortcut_flags)} tune the --task shortcuts; with --task_file, write the "
                    "same in the task file (labels:, calibrate: false, explain: true, confidence_temperature:)"
                ]
        elif settings.task not in task_names():
            return []  # the declared choices already say so
        try:
            make_task_set(settings)
        except ValueError as err:
            return [str(err) if settings.task_file else f"--task {settings.task}: {err}"]
        return []
