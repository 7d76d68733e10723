"""What `make tune` trains and how it measures it: the settings and the command line that gives them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import UserInputError
from transforms.classify import parse_labels

METHODS = ("head", "lora")


@dataclass(frozen=True)
class TuneConfig:
    """What `make tune` trains and how it measures it."""

    input: str
    output: str
    text_field: str = "text"
    label_field: str = "label"
    labels: tuple[str, ...] = ()
    task_file: str | None = None
    task: str | None = None
    methods: tuple[str, ...] = ("head",)
    model: str = "embedded"
    dtype: str = "bfloat16"
    seed: int = 0
    train_examples: int = 0  # 0: all
    holdout: float = 0.25
    folds: int = 5
    eval_input: str | None = None
    eval_limit: int = 0
    prompt_examples: int = 5  # per label, for the examples-in-prompt comparison (0: skip it)
    head_poolings: tuple[str, ...] = ("last", "mean", "last+mean")  # the head's cross-validated grid
    head_l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_epochs: int = 3
    lora_learning_rate: float = 3e-4
    lora_batch_size: int = 8

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if not self.methods or unknown:
            raise UserInputError(f"--method must be head, lora or head,lora; got {','.join(self.methods)}")
        if bool(self.labels) == bool(self.task_file):
            raise UserInputError("give --labels a,b,c or --task_file F (with --task NAME), not both or neither")
        if not 0.05 <= self.holdout <= 0.5:
            raise UserInputError(f"--holdout must be between 0.05 and 0.5, got {self.holdout}")


DESCRIPTION = (
    "`make tune` / `python -m pipelines.tune`: specialize the model to a classify task with 20-200 labelled examples."
)


def parse_args(argv: Sequence[str] | None) -> TuneConfig:
    # a flag left out keeps TuneConfig's default (argparse then sets no attribute): each default is written once
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.tune", description=DESCRIPTION, argument_default=argparse.SUPPRESS
    )
    add = parser.add_argument
    add("--input", required=True, help="Labelled JSONL, local or gs://.")
    add("--output", required=True, help="Adapter folder (with --method head,lora: one subfolder per method).")
    add("--text_field")
    add("--label_field")
    add("--labels", help="The classify task's labels, a,b,c (or --task_file).")
    add("--task_file", help="A task file (local or gs://) holding the classify task to specialize.")
    add("--task", help="The task's name in --task_file (needed when it holds several).")
    add("--method", help="head, lora, or head,lora.")
    add("--model")
    add("--dtype", help="The engine's dtype for features and measurement (LoRA trains in float32).")
    add("--seed", type=int)
    add("--train_examples", type=int, help="Use N examples of --input, balanced over labels (0: all).")
    add("--holdout", type=float, help="Fraction of each label held out for measurement.")
    add("--folds", type=int, help="k for k-fold cross-validation (small inputs).")
    add("--eval_input", help="Measure on this labelled JSONL instead of holding out part of --input.")
    add("--eval_limit", type=int, help="Use N examples of --eval_input, balanced (0: all).")
    add("--prompt_examples", type=int, help="Examples per label for the examples-in-prompt line.")
    add("--head_l2", help="L2 strengths the head's cross-validation tries.")
    add("--lora_rank", type=int)
    add("--lora_alpha", type=float)
    add("--lora_targets", help="Comma-separated module names LoRA adapts (default: every projection).")
    add("--lora_epochs", type=int)
    add("--lora_learning_rate", type=float)
    add("--lora_batch_size", type=int)
    values = vars(parser.parse_args(argv))
    if "labels" in values:
        values["labels"] = parse_labels(values["labels"]) if values["labels"] else ()
    if "method" in values:
        values["methods"] = _listed(values.pop("method"))
    if "head_l2" in values:
        values["head_l2"] = tuple(float(x) for x in _listed(values["head_l2"]))
    if "lora_targets" in values:
        values["lora_targets"] = _listed(values["lora_targets"])
    return TuneConfig(**values)


def _listed(text: str) -> tuple[str, ...]:
    """A comma-separated flag value as its non-empty items: "head, lora," -> ("head", "lora")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())
