"""Few-shot examples of a task: inline in the task file, or a JSONL file (local or gs://) with named fields.

    examples: [{text: "Where is my parcel?", label: shipping}]
    examples: gs://bucket/topic_examples.jsonl                 # fields text and label (output for generate)
    examples: {path: examples.jsonl, text_field: body, label_field: topic, limit: 20}

An example's other fields fill a prompt's other {field} placeholders. Examples go into the prompt's shared
head, so they are read once per job and computed once per model copy.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import UserInputError
from common.files import read_jsonl
from transforms.taskfile import Key, TaskFileError, check_keys

FILE_KEYS = {
    "path": Key(lambda v: isinstance(v, str) and bool(v.strip()), "a JSONL path, local or gs://", required=True),
    "text_field": Key(lambda v: isinstance(v, str) and bool(v), "the field holding each example's text"),
    "label_field": Key(lambda v: isinstance(v, str) and bool(v), "the field holding each example's answer"),
    "limit": Key(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "how many to use, >= 1"),
}
MAX_EXAMPLES = 200  # a few-shot prompt, not a training set: more belongs in `make tune`


@dataclass(frozen=True)
class Example:
    text: str
    answer: str | tuple[str, ...]  # a label, a list of labels (multi_label), the expected output, or its JSON
    fields: tuple[tuple[str, str], ...] = ()  # other fields, for prompts with {field} placeholders

    def field(self, name: str) -> str | None:
        return dict(self.fields).get(name)


def _as_example(
    item: Any, text_field: str, answer_field: str, multi: bool, place: str, structured: bool = False
) -> Example:
    if not isinstance(item, Mapping):
        raise TaskFileError(
            f"{place}: expected a mapping like {{{text_field}: ..., {answer_field}: ...}}, got {item!r}"
        )
    text = item.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise TaskFileError(f"{place}: has no text in field {text_field!r} (fields: {sorted(item)})")
    answer = item.get(answer_field)
    if structured:  # extract: a mapping, kept as its JSON text (checked against the schema by the task)
        if isinstance(answer, str):
            try:
                answer = json.loads(answer)
            except json.JSONDecodeError as err:
                raise TaskFileError(f"{place}: field {answer_field!r} is not JSON: {err}") from err
        if not isinstance(answer, Mapping):
            raise TaskFileError(f"{place}: field {answer_field!r} must be a mapping of the schema's properties")
        answer = json.dumps(answer, ensure_ascii=False)
    elif multi:
        answer = [a.strip() for a in answer.split(",")] if isinstance(answer, str) else answer
        if not isinstance(answer, list) or not all(isinstance(a, str) for a in answer):
            raise TaskFileError(f"{place}: field {answer_field!r} must list the labels that apply, e.g. [a, b]")
        answer = tuple(answer)
    elif not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or str(answer).strip() == "":
        raise TaskFileError(f"{place}: has no {answer_field!r} (fields: {sorted(item)})")
    else:
        answer = str(answer).strip()
    others = tuple(sorted((k, str(v)) for k, v in item.items() if k not in (text_field, answer_field)))
    return Example(text.strip(), answer, others)


def load_examples(
    value: Any, place: str, answer_field: str, multi: bool, read: Callable[[str], bytes], structured: bool = False
) -> tuple[Example, ...]:
    """The examples a task file gives, inline or from a file; errors name the file and line. ``structured``:
    each answer is a mapping (an extract task's output), kept as JSON text."""
    if isinstance(value, list):
        found = tuple(
            _as_example(item, "text", answer_field, multi, f"{place}: example {n}", structured)
            for n, item in enumerate(value, start=1)
        )
        return _bounded(found, place)
    spec = {"path": value} if isinstance(value, str) else dict(value)
    check_keys(spec, FILE_KEYS, place, "an examples file")
    path, text_field = spec["path"], spec.get("text_field", "text")
    label_field, limit = spec.get("label_field", answer_field), spec.get("limit", MAX_EXAMPLES)
    try:  # the first ``limit`` lines only: _bounded refuses more than MAX_EXAMPLES
        rows = list(itertools.islice(read_jsonl(path, read), limit))
    except UserInputError as err:
        raise TaskFileError(f"{place}: {err}; check the examples file") from err
    found = tuple(
        _as_example(item, text_field, label_field, multi, f"{place}: {path} line {n}", structured) for n, item in rows
    )
    return _bounded(found, place)


def _bounded(found: tuple[Example, ...], place: str) -> tuple[Example, ...]:
    if not found:
        raise TaskFileError(f"{place}: no examples; leave the key out or give at least one")
    if len(found) > MAX_EXAMPLES:
        raise TaskFileError(
            f"{place}: {len(found)} examples; a prompt holds at most {MAX_EXAMPLES} "
            "(set limit:, or specialize the model with `make tune` instead)"
        )
    return found
