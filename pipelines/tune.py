"""`make tune` / `python -m pipelines.tune`: specialize the model to a classify task with 20-200 labelled examples.

    python -m pipelines.tune --input labelled.jsonl --labels a,b,c --method head --output adapters/topic

It trains a classification head over the frozen model's features (seconds) and/or a LoRA adapter on the
label-scoring objective (minutes on a CPU), then prints accuracy and macro-F1 of zero-shot, examples in the
prompt, and each trained method on examples none of them trained on: a held-out part of the input, k-fold
cross-validation when the input is small, or --eval_input. Each adapter is written with a model card
(``model_card.json``: base model and data hashes, settings, metrics) and runs with
``batch_inference --adapter DIR`` (or a task file's ``adapter:`` key).

Prompts are the pipeline's own (the task's template, rendered by ``inference.prompts``), so a head or an
adapter sees at inference exactly what it was trained on. Deterministic for a --seed on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import UserInputError
from common.quality import Quality, quality
from common.records import Record
from pipelines.tune_data import (
    Labelled,
    data_hash,
    folds,
    holdout,
    is_small,
    prompt_examples,
    read_labelled,
    sample,
    with_examples,
)
from transforms.classify import ClassifyTask, parse_labels
from transforms.registry import build_task_set, shortcut
from transforms.task import TaskSet
from transforms.taskfile import TaskFileError, load_task_file

METHODS = ("head", "lora")
CARD_FORMAT = "gemma-beam-model-card/v1"


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


def classify_tasks(config: TuneConfig) -> TaskSet:
    """The classify task to specialize, alone in a task set: --labels builds the classify shortcut."""
    if config.labels:
        return shortcut("classify", labels=config.labels)
    file = load_task_file(str(config.task_file), _read)
    chosen = [raw for raw in file.tasks if config.task in (None, raw["name"])]
    if config.task is None and len(chosen) > 1:
        raise TaskFileError(f"{config.task_file}: holds several tasks; choose one with --task NAME")
    if not chosen:
        raise TaskFileError(f"{config.task_file}: has no task named {config.task!r}")
    single = type(file)(file.source, file.input_label, (chosen[0],))
    tasks = build_task_set(single, _read)
    task = tasks.tasks[0]
    if not isinstance(task, ClassifyTask) or task.multi_label:
        raise TaskFileError(f"{config.task_file}: task {task.name!r} must be a single-label classify task")
    return tasks


def _read(path: str) -> bytes:
    from common.files import read_bytes

    return read_bytes(path)


class Tuner:
    """One engine (and its runner) for the base model; trains and measures each method on one split."""

    def __init__(self, config: TuneConfig, tasks: TaskSet) -> None:
        from gemma_ops.adapters import model_hash
        from gemma_ops.checkpoints import resolve_model
        from gemma_ops.engine import GemmaEngine
        from inference.runner import EngineRunner

        self.config = config
        self.tasks = tasks
        (self.task,) = tasks.tasks
        self.names = [label.name for label in self.task.labels]
        self.words = [label.word for label in self.task.labels]
        self.checkpoint = resolve_model(config.model)
        self.engine = GemmaEngine.from_pretrained(self.checkpoint, device="cpu", dtype=config.dtype)
        self.runner = EngineRunner(self.engine)
        self.base_hash = model_hash(self.checkpoint)
        self.base_name = config.model.rstrip("/") if config.model != "embedded" else "embedded"

    # -- prompts

    def encode(self, examples: Sequence[Labelled], tasks: TaskSet | None = None) -> tuple[list[list[int]], tuple]:
        """The full prompt ids of each example (trunk + the question's tail) and the shared head."""
        tasks = tasks or self.tasks
        template = tasks.templates[0]
        encoded = [
            self.runner.prompts.encode(tasks.build_request(Record(f"e{i}", e.text)).fields, template)
            for i, e in enumerate(examples)
        ]
        heads = {e.head for e in encoded}
        return [e.full(0) for e in encoded], heads.pop() if len(heads) == 1 else ()

    def predict(self, runner: Any, tasks: TaskSet, examples: Sequence[Labelled]) -> list[str | None]:
        """Each example's label through ``runner`` as the pipeline would produce it."""
        column = f"{self.task.name}_label" if tasks.prefixed else "label"
        predicted: list[str | None] = []
        for first in range(0, len(examples), 32):
            records = [Record(f"e{first + i}", e.text) for i, e in enumerate(examples[first : first + 32])]
            responses = runner.run([tasks.build_request(record) for record in records])
            for record, response in zip(records, responses, strict=True):
                if response.error:
                    raise RuntimeError(f"the model could not answer an example: {response.error}")
                predicted.append(tasks.to_row(record, response, "tune", "tune")[column])
        return predicted

    # -- methods

    def train_head(self, train: Sequence[Labelled], bar: Any) -> Any:
        """A ClassificationHead trained on the examples' features."""
        import torch

        from gemma_ops.adapters import BaseModel
        from gemma_ops.adapters.head import ClassificationHead
        from gemma_ops.tuning.head import train_head

        prompts, head = self.encode(train)
        vectors = []
        for first in range(0, len(prompts), 16):
            results = self.engine.features(prompts[first : first + 16], pooling="last+mean", shared_prefix=head)
            vectors += [r.vector for r in results]
            bar.update(len(results))
        fitted = train_head(
            torch.stack(vectors), [self.names.index(e.label) for e in train], len(self.names), self.head_settings()
        )
        hidden = self.engine.model.config.hidden_size
        return ClassificationHead(
            labels=tuple(self.words),
            pooling=fitted.pooling,
            weight=fitted.weight,
            bias=fitted.bias,
            mean=fitted.mean,
            scale=fitted.scale,
            base=BaseModel(self.base_name, self.base_hash),
            hidden_size=hidden,
            notes={"l2": fitted.l2, "task_fingerprint": self.tasks.fingerprint(), "examples": len(train)},
        )

    def head_settings(self) -> Any:
        from gemma_ops.tuning.head import HeadSettings

        c = self.config
        return HeadSettings(poolings=c.head_poolings, l2=c.head_l2, folds=c.folds, seed=c.seed)

    def train_lora(self, train: Sequence[Labelled], folder: Path, bar: Any) -> list[float]:
        from gemma_ops.tuning.lora import LabelledPrompt, train_lora

        prompts, _ = self.encode(train)
        candidates = self.runner.prompts.candidate_ids(self.tasks.templates[0], 0)
        examples = [LabelledPrompt(tuple(p), self.names.index(e.label)) for p, e in zip(prompts, train, strict=True)]

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

        return train_lora(self.checkpoint, examples, candidates, self.lora_settings(), folder, progress)

    def lora_settings(self) -> Any:
        from gemma_ops.tuning.lora import LoraSettings

        c = self.config
        return LoraSettings(
            rank=c.lora_rank,
            alpha=c.lora_alpha,
            targets=c.lora_targets,
            epochs=c.lora_epochs,
            learning_rate=c.lora_learning_rate,
            batch_size=c.lora_batch_size,
            seed=c.seed,
        )

    def lora_runner(self, folder: Path) -> Any:
        from gemma_ops.engine import GemmaEngine
        from inference.runner import EngineRunner

        engine = GemmaEngine.from_pretrained(self.checkpoint, device="cpu", dtype=self.config.dtype, adapter=folder)
        return EngineRunner(engine)


@dataclass
class MethodResult:
    name: str
    predicted: dict[int, str | None]
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def run(config: TuneConfig, out=sys.stdout) -> dict[str, Quality]:
    """Train, measure, save; returns each method's quality on the examples held out from it."""
    from tqdm import tqdm

    from inference.runner import EngineRunner

    tasks = classify_tasks(config)
    names = [label.name for label in tasks.tasks[0].labels]
    examples = read_labelled(config.input, config.text_field, config.label_field, names)
    if config.train_examples:
        examples = sample(examples, names, config.train_examples, config.seed)
    tuner = Tuner(config, tasks)
    if config.eval_input:
        evaluation = read_labelled(config.eval_input, config.text_field, config.label_field, names)
        if config.eval_limit:
            evaluation = sample(evaluation, names, config.eval_limit, config.seed)
        everything = list(examples) + evaluation
        splits = [(list(range(len(examples))), list(range(len(examples), len(everything))))]
        how = f"{config.eval_input} ({len(evaluation)} examples)"
    elif is_small(examples, names):
        everything = list(examples)
        parts = folds(
            everything, names, min(config.folds, min(sum(e.label == n for e in examples) for n in names)), config.seed
        )
        splits = [(sorted(set(range(len(everything))) - set(p)), p) for p in parts]
        how = f"{len(parts)}-fold cross-validation over {len(everything)} examples"
    else:
        train, held = holdout(examples, names, config.holdout, config.seed)
        everything = train + held
        splits = [(list(range(len(train))), list(range(len(train), len(everything))))]
        how = f"{len(held)} held-out examples ({config.holdout:.0%} of each label)"
    print(f"training on {len(examples)} examples; measured on {how}", file=sys.stderr)
    methods = ["zero-shot"] + (["examples in prompt"] if config.prompt_examples else []) + list(config.methods)
    results = {m: MethodResult(m, {}) for m in methods}
    output = Path(config.output)
    final = len(splits) > 1  # k-fold: the saved adapters are trained on every example afterwards
    for number, (train_ids, eval_ids) in enumerate(splits, start=1):
        train = [everything[i] for i in train_ids]
        held = [everything[i] for i in eval_ids]
        _measure(results["zero-shot"], eval_ids, tuner.predict, tuner.runner, tasks, held)
        if config.prompt_examples:
            shown = with_examples(tasks, prompt_examples(train, names, config.prompt_examples, config.seed))
            _measure(results["examples in prompt"], eval_ids, tuner.predict, tuner.runner, shown, held)
        if "head" in config.methods:
            with tqdm(total=len(train), desc=f"head features (split {number}/{len(splits)})", file=sys.stderr) as bar:
                start = time.perf_counter()
                head = tuner.train_head(train, bar)
                results["head"].train_seconds += time.perf_counter() - start
            runner = EngineRunner(tuner.engine, head=head)
            _measure(results["head"], eval_ids, tuner.predict, runner, tasks, held)
            if not final:
                _save_head(head, _folder(output, "head", config))
        if "lora" in config.methods:
            folder = _folder(output, "lora", config) if not final else output / ".folds" / f"lora-{number}"
            with tqdm(total=1, desc=f"LoRA (split {number}/{len(splits)})", file=sys.stderr) as bar:
                start = time.perf_counter()
                tuner.train_lora(train, folder, bar)
                results["lora"].train_seconds += time.perf_counter() - start
            runner = tuner.lora_runner(folder)
            _measure(results["lora"], eval_ids, tuner.predict, runner, tasks, held)
    if final:
        _train_final(tuner, examples, output, config)
    qualities = {}
    gold = [e.label for e in everything]
    print(
        f"{'method':<20} {'n':>4} {'accuracy':>9} {'macro-F1':>9} {'recall':>7} {'train s':>8} {'eval s':>7}", file=out
    )
    for method, result in results.items():
        ids = sorted(result.predicted)
        q = quality([gold[i] for i in ids], [result.predicted[i] for i in ids], names)
        qualities[method] = q
        print(
            f"{method:<20} {q.count:>4} {q.accuracy:>9.3f} {q.macro_f1:>9.3f} {q.macro_recall:>7.3f} "
            f"{result.train_seconds:>8.1f} {result.eval_seconds:>7.1f}",
            file=out,
            flush=True,
        )
    for method in config.methods:
        _write_card(_folder(output, method, config), method, tuner, examples, how, qualities, results)
    return qualities


def _measure(result: MethodResult, ids: list[int], predict: Any, runner: Any, tasks: TaskSet, held: list) -> None:
    """Predict the held-out examples; each split's figures go to stderr at once, so a long run that is stopped
    later still leaves the methods it measured."""
    start = time.perf_counter()
    predicted = predict(runner, tasks, held)
    result.predicted.update(zip(ids, predicted, strict=True))
    result.eval_seconds += time.perf_counter() - start
    names = [label.name for label in tasks.tasks[0].labels]
    split = quality([e.label for e in held], predicted, names)
    print(f"  {result.name} on this split: {split.line()} (train {result.train_seconds:.1f} s)", file=sys.stderr)


def _folder(output: Path, method: str, config: TuneConfig) -> Path:
    """The adapter folder: --output itself for one method, --output/<method> for both."""
    return output if len(config.methods) == 1 else output / method


def _save_head(head: Any, folder: Path) -> None:
    head.save(folder)


def _train_final(tuner: Tuner, examples: list[Labelled], output: Path, config: TuneConfig) -> None:
    """After k-fold measurement: the saved adapters, trained on every example."""
    import shutil

    from tqdm import tqdm

    if "head" in config.methods:
        with tqdm(total=len(examples), desc="head on all examples", file=sys.stderr) as bar:
            _save_head(tuner.train_head(examples, bar), _folder(output, "head", config))
    if "lora" in config.methods:
        with tqdm(total=1, desc="LoRA on all examples", file=sys.stderr) as bar:
            tuner.train_lora(examples, _folder(output, "lora", config), bar)
    shutil.rmtree(output / ".folds", ignore_errors=True)


def _write_card(
    folder: Path,
    method: str,
    tuner: Tuner,
    examples: list[Labelled],
    how: str,
    qualities: dict[str, Quality],
    results: dict[str, MethodResult],
) -> None:
    """model_card.json beside the adapter: what it was trained on and how, and how well it did."""
    config = tuner.config
    settings: dict[str, Any] = {"seed": config.seed, "dtype": config.dtype}
    settings.update(asdict(tuner.lora_settings() if method == "lora" else tuner.head_settings()))
    card = {
        "format": CARD_FORMAT,
        "method": method,
        "base_model": {"name": tuner.base_name, "hash": tuner.base_hash},
        "data": {
            "source": config.input,
            "examples": len(examples),
            "sha256": data_hash(examples),
            "text_field": config.text_field,
            "label_field": config.label_field,
        },
        "task": {
            "name": tuner.task.name,
            "labels": tuner.names,
            "words": tuner.words,
            "fingerprint": tuner.tasks.fingerprint(),
        },
        "settings": settings,
        "evaluation": how,
        "metrics": {
            name: {**asdict(q), "train_seconds": round(results[name].train_seconds, 2)} for name, q in qualities.items()
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_card.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")


def parse_args(argv: Sequence[str] | None) -> TuneConfig:
    parser = argparse.ArgumentParser(prog="python -m pipelines.tune", description=__doc__.split("\n\n")[0])
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
        methods=tuple(m.strip() for m in args.method.split(",") if m.strip()),
        model=args.model,
        dtype=args.dtype,
        seed=args.seed,
        train_examples=args.train_examples,
        holdout=args.holdout,
        folds=args.folds,
        eval_input=args.eval_input,
        eval_limit=args.eval_limit,
        prompt_examples=args.prompt_examples,
        head_l2=tuple(float(x) for x in args.head_l2.split(",") if x.strip()),
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        lora_epochs=args.lora_epochs,
        lora_learning_rate=args.lora_learning_rate,
        lora_batch_size=args.lora_batch_size,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        run(config)
    except (UserInputError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
