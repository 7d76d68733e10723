"""The task settings of a job, declared once: which task, its labels, generation and calibration."""

from __future__ import annotations

from dataclasses import dataclass

from common.settings import INTEGER, problems, raise_problems, setting
from transforms.registry import make_task, task_names, tasks_help

LABEL_LIST = r"^[^,]+(,[^,]+)+$"


@dataclass(frozen=True, kw_only=True)
class TaskSettings:
    task: str = setting("sentiment", choices=task_names, help=tasks_help())
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

    def __post_init__(self) -> None:
        raise_problems(problems(self, TaskSettings) + TaskSettings.task_problems(self))

    @staticmethod
    def task_problems(settings: TaskSettings) -> list[str]:
        """What keeps the named task from being built with these settings (e.g. classify without labels)."""
        if settings.task not in task_names():
            return []  # the declared choices already say so
        try:
            make_task(settings)
        except ValueError as err:
            return [f"--task {settings.task}: {err}"]
        return []
