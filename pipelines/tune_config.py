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
    parser = argparse.ArgumentParser(prog="python -m pipelines.tune", description=DESCRIPTION)
    add = parser.add_argument
    add("--input", required=True, help="Labelled JSONL, local or gs://.")
    add("--output", required=True, help="Adapter folder (with --method head,lora: one subfolder per method).")
    add("--text_field", default="text")
    add("--label_field", default="label")
    add("--labels", default="", help="The classify task's labels, a,b,c (or --task_file).")
    add("--task_file", help="A task file (local or gs://) holding the classify task to specialize.")
    add("--task", help="The task's name in --task_file (needed when it holds several).")
    add("--method", default="head", help="head, lora, or head,lora.")
    add("--model", default="embedded")
    add("--dtype", default="bfloat16", help="The engine's dtype for features and measurement (LoRA trains in float32).")
    add("--seed", type=int, default=0)
    add("--train_examples", type=int, default=0, help="Use N examples of --input, balanced over labels (0: all).")
    add("--holdout", type=float, default=0.25, help="Fraction of each label held out for measurement.")
    add("--folds", type=int, default=5, help="k for k-fold cross-validation (small inputs).")
    add("--eval_input", help="Measure on this labelled JSONL instead of holding out part of --input.")
    add("--eval_limit", type=int, default=0, help="Use N examples of --eval_input, balanced (0: all).")
    add("--prompt_examples", type=int, default=5, help="Examples per label for the examples-in-prompt line.")
    add("--head_l2", default="0.0001,0.001,0.01,0.1,1", help="L2 strengths the head's cross-validation tries.")
    add("--lora_rank", type=int, default=8)
    add("--lora_alpha", type=float, default=16.0)
    add("--lora_targets", default=",".join(TuneConfig.lora_targets))
    add("--lora_epochs", type=int, default=3)
    add("--lora_learning_rate", type=float, default=3e-4)
    add("--lora_batch_size", type=int, default=8)
    args = parser.parse_args(argv)
    return TuneConfig(
        input=args.input,
        output=args.output,
        text_field=args.text_field,
        label_field=args.label_field,
        labels=parse_labels(args.labels) if args.labels else (),
        task_file=args.task_file,
        task=args.task,
        methods=_listed(args.method),
        model=args.model,
        dtype=args.dtype,
        seed=args.seed,
        train_examples=args.train_examples,
        holdout=args.holdout,
        folds=args.folds,
        eval_input=args.eval_input,
        eval_limit=args.eval_limit,
        prompt_examples=args.prompt_examples,
        head_l2=tuple(float(x) for x in _listed(args.head_l2)),
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=_listed(args.lora_targets),
        lora_epochs=args.lora_epochs,
        lora_learning_rate=args.lora_learning_rate,
        lora_batch_size=args.lora_batch_size,
    )


def _listed(text: str) -> tuple[str, ...]:
    """A comma-separated flag value as its non-empty items: "head, lora," -> ("head", "lora")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())
