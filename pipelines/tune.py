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

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserInputError
from common.files import read_bytes
from common.quality import Quality, quality
from common.records import Record
from pipelines.tune_card import write_card
from pipelines.tune_config import TuneConfig, parse_args
from pipelines.tune_data import (
    Labelled,
    folds,
    holdout,
    is_small,
    prompt_examples,
    read_labelled,
    sample,
    with_examples,
)
from transforms.classify import ClassifyTask
from transforms.registry import build_task_set, shortcut
from transforms.task import TaskSet
from transforms.taskfile import TaskFileError, load_task_file


def classify_tasks(config: TuneConfig) -> TaskSet:
    """The classify task to specialize, alone in a task set: --labels builds the classify shortcut."""
    if config.labels:
        return shortcut("classify", labels=config.labels)
    file = load_task_file(str(config.task_file), read_bytes)
    chosen = [raw for raw in file.tasks if config.task in (None, raw["name"])]
    if config.task is None and len(chosen) > 1:
        raise TaskFileError(f"{config.task_file}: holds several tasks; choose one with --task NAME")
    if not chosen:
        raise TaskFileError(f"{config.task_file}: has no task named {config.task!r}")
    single = dataclasses.replace(file, tasks=(chosen[0],))
    tasks = build_task_set(single, read_bytes)
    task = tasks.tasks[0]
    if not isinstance(task, ClassifyTask) or task.multi_label:
        raise TaskFileError(f"{config.task_file}: task {task.name!r} must be a single-label classify task")
    return tasks


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
        self.base_name = config.model.rstrip("/")

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
                head.save(_folder(output, "head", config))
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
        write_card(_folder(output, method, config), method, tuner, examples, how, qualities, results)
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


def _train_final(tuner: Tuner, examples: list[Labelled], output: Path, config: TuneConfig) -> None:
    """After k-fold measurement: the saved adapters, trained on every example."""
    import shutil

    from tqdm import tqdm

    if "head" in config.methods:
        with tqdm(total=len(examples), desc="head on all examples", file=sys.stderr) as bar:
            tuner.train_head(examples, bar).save(_folder(output, "head", config))
    if "lora" in config.methods:
        with tqdm(total=1, desc="LoRA on all examples", file=sys.stderr) as bar:
            tuner.train_lora(examples, _folder(output, "lora", config), bar)
    shutil.rmtree(output / ".folds", ignore_errors=True)


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
