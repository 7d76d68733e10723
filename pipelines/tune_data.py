"""The labelled examples `make tune` learns from: read (JSONL, local or gs://), checked against the classify task's
labels, sampled and split with a seed, and rendered into the prompts the pipeline would send for them.

Splits are stratified: each label's examples are shuffled with the seed and dealt out, so every label is in
every part. A set too small to hold out a quarter of each label (under 20 examples per label) is
cross-validated instead (k folds, each example predicted once by a model that did not see it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import UserInputError
from common.files import read_jsonl
from transforms.classify import ClassifyTask
from transforms.task import TaskSet

SMALL_PER_LABEL = 20  # fewer examples of some label than this: k-fold instead of a held-out part


@dataclass(frozen=True)
class Labelled:
    """One example: its text and its label's name."""

    text: str
    label: str


def read_labelled(path: str, text_field: str, label_field: str, labels: Sequence[str]) -> list[Labelled]:
    """Every line of a JSONL file as an example; UserInputError names the line and the field that is wrong."""
    examples = []
    for number, row in read_jsonl(path):
        text, label = (row.get(text_field), row.get(label_field)) if isinstance(row, dict) else (None, None)
        if not isinstance(text, str) or not text.strip():
            raise UserInputError(f"{path}:{number}: no text in field {text_field!r} (set --text_field)")
        if label not in labels:
            raise UserInputError(
                f"{path}:{number}: label {label!r} (field {label_field!r}) is not one of {', '.join(labels)}"
            )
        examples.append(Labelled(text, str(label)))
    if not examples:
        raise UserInputError(f"--input {path} holds no examples")
    return examples


def data_hash(examples: Sequence[Labelled]) -> str:
    """sha256 of the examples used, in order (the model card's data hash)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.text, example.label]).encode() + b"\n")
    return digest.hexdigest()


def by_label(examples: Sequence[Labelled], labels: Sequence[str], seed: int) -> dict[str, list[Labelled]]:
    """Each label's examples, shuffled with ``seed``."""
    rng = random.Random(seed)
    groups = {label: [e for e in examples if e.label == label] for label in labels}
    for members in groups.values():
        rng.shuffle(members)
    return groups


def sample(examples: Sequence[Labelled], labels: Sequence[str], count: int, seed: int) -> list[Labelled]:
    """``count`` examples, as balanced over the labels as the data allows (dealt round-robin)."""
    groups = by_label(examples, labels, seed)
    chosen: list[Labelled] = []
    while len(chosen) < count and any(groups.values()):
        for label in labels:
            if groups[label] and len(chosen) < count:
                chosen.append(groups[label].pop())
    return chosen


def is_small(examples: Sequence[Labelled], labels: Sequence[str]) -> bool:
    return min(sum(e.label == label for e in examples) for label in labels) < SMALL_PER_LABEL


def folds(examples: Sequence[Labelled], labels: Sequence[str], k: int, seed: int) -> list[list[int]]:
    """Stratified folds of example indices."""
    index = {id(e): i for i, e in enumerate(examples)}
    parts: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for members in by_label(examples, labels, seed).values():
        for member in members:
            parts[dealt % k].append(index[id(member)])
            dealt += 1
    return [sorted(part) for part in parts]


def holdout(
    examples: Sequence[Labelled], labels: Sequence[str], fraction: float, seed: int
) -> tuple[list[Labelled], list[Labelled]]:
    """(train, held out): ``fraction`` of each label held out."""
    train, held = [], []
    for members in by_label(examples, labels, seed).values():
        cut = max(1, round(len(members) * fraction))
        held += members[:cut]
        train += members[cut:]
    return train, held


def with_examples(tasks: TaskSet, examples: Sequence[Labelled]) -> TaskSet:
    """The task set with ``examples`` in the classify task's prompt (examples-in-prompt), interleaved by label
    so that no label sits next to the record more than another."""
    from transforms.examples import Example

    (task,) = tasks.tasks
    assert isinstance(task, ClassifyTask)
    shown = copy.copy(task)
    shown.examples = tuple(Example(e.text, e.label) for e in examples)
    return TaskSet((shown,), tasks.input_label, prefixed=tasks.prefixed)


def prompt_examples(examples: Sequence[Labelled], labels: Sequence[str], per_label: int, seed: int) -> list[Labelled]:
    """``per_label`` examples of each label, interleaved (a, b, c, a, b, c, ...)."""
    groups = by_label(examples, labels, seed)
    return [groups[label][i] for i in range(per_label) for label in labels if i < len(groups[label])]
