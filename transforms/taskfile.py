"""Task files: the user's own tasks, read from YAML (or JSON, which is YAML), local or gs://, and validated
before any worker starts. Every error names the file, the task and the key, and says what to write instead.

    input_label: Ticket            # optional: how prompts introduce the record (default: Text)
    tasks:
      - name: topic                # column prefix: topic_label, topic_confidence, ...
        kind: classify
        labels: [{name: price, description: cost, value for money}, quality]
        explain: true              # optional: topic_evidence, the words the label rests on
        gold: topic_label          # optional: input field with the known label; the run report scores it
      - name: note
        kind: generate
        prompt: "One sentence for the support lead:"
      - name: ticket               # columns ticket_product, ticket_amount, typed by the schema
        kind: extract
        schema: {type: object, properties: {product: {type: string}, amount: {type: [number, "null"]}}}

Each kind declares its keys (``KEYS``); a key that no kind knows is refused with the closest known one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import UserInputError

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # a column prefix every sink accepts (BigQuery included)
FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # an input field name (as --text_field takes it)


class TaskFileError(UserInputError):
    """A task file that cannot be used, with where (file, task, key) and what to write instead; the CLI prints
    it as one line and exits 2 (``common.errors``)."""


@dataclass(frozen=True)
class Key:
    """One key a task (or the file) may have: its type check, what it is, and whether it is required."""

    check: Callable[[Any], bool]
    expects: str  # what a good value looks like, for the error message
    required: bool = False


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(value: Any) -> bool:
    return _is_number(value) and 0.0 <= value <= 1.0


COMMON_KEYS = {
    "name": Key(
        lambda v: isinstance(v, str) and bool(NAME.match(v)),
        "a lower-case name like ticket_topic (letters, digits, _; it prefixes the task's columns)",
        required=True,
    ),
    "kind": Key(_is_text, "the task kind", required=True),
    "instructions": Key(_is_text, "text that tells the model what the task is"),
    "examples": Key(
        lambda v: isinstance(v, (list, str, dict)),
        "a list of {text: ..., label: ...} (or output: "
        "for generate and extract), a JSONL path (local or gs://), or {path: ..., text_field: ..., label_field: ...}",
    ),
}
SAMPLING_KEYS = {  # the generating kinds' (generate, extract)
    "max_new_tokens": Key(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number of tokens, at least 1"
    ),
    "temperature": Key(lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 is greedy)"),
    "seed": Key(lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
}
KEYS: dict[str, dict[str, Key]] = {
    "classify": {
        **COMMON_KEYS,
        "labels": Key(
            lambda v: isinstance(v, list), "a list of labels, each a name or {name, description}", required=True
        ),
        "question": Key(_is_text, "the line after the record that the label answers, e.g. 'Topic:'"),
        "multi_label": Key(lambda v: isinstance(v, bool), "true or false"),
        "threshold": Key(_fraction, "a probability between 0 and 1 (multi_label: a label applies at or above it)"),
        "label_question": Key(
            lambda v: _is_text(v) and "{label}" in v, "a question holding {label}, e.g. 'Is it about {label}?'"
        ),
        "min_confidence": Key(_fraction, "a probability between 0 and 1; rows below it abstain"),
        "calibrate": Key(lambda v: isinstance(v, bool), "true or false"),
        "confidence_temperature": Key(
            lambda v: _is_number(v) and 0 < v <= 100,
            "a number > 0 that rescales confidence (below 1 surer, above 1 less sure); the run report fits it",
        ),
        "explain": Key(
            lambda v: isinstance(v, (bool, dict)),
            "true, or {top_k: 3}: an evidence column with the words the chosen label rests on",
        ),
        "gold": Key(
            lambda v: isinstance(v, str) and bool(FIELD.match(v)),
            "the input field holding each record's known label, e.g. label (the run report scores the task)",
        ),
    },
    "generate": {
        **COMMON_KEYS,
        "prompt": Key(_is_text, "the prompt, with {text} and any other input field as {field}", required=True),
        **SAMPLING_KEYS,
        "stop": Key(
            lambda v: _is_text(v) or (isinstance(v, list) and all(isinstance(s, str) and s for s in v)),
            "a string or a list of non-empty strings",
        ),
        "output": Key(lambda v: isinstance(v, str) and bool(NAME.match(v)), "a column name like summary"),
    },
    "extract": {
        **COMMON_KEYS,
        "schema": Key(
            lambda v: isinstance(v, dict) or _is_text(v),
            "a JSON schema of type object (YAML or JSON), e.g. {type: object, properties: {product: {type: string}}}",
            required=True,
        ),
        **SAMPLING_KEYS,
    },
}
FILE_KEYS = {
    "tasks": Key(lambda v: isinstance(v, list) and bool(v), "a non-empty list of tasks", required=True),
    "input_label": Key(
        lambda v: _is_text(v) and '"""' not in v and "\n" not in v,
        "a short word that introduces the record in prompts, e.g. Ticket",
    ),
    "adapter": Key(_is_text, "an adapter folder (local or gs://) from make tune or PEFT, as for --adapter"),
}


@dataclass(frozen=True)
class TaskFile:
    """A parsed, key-checked task file: the raw task mappings, to be built by their kinds."""

    source: str
    input_label: str
    tasks: tuple[Mapping[str, Any], ...]
    adapter: str | None = None  # the file's adapter: key (the job's --adapter when that is not given)


def where(source: str, task: str | None = None, key: str | None = None) -> str:
    """ "tasks.yaml: task 'topic': key 'labels'" — the start of every task-file error."""
    parts = [source]
    if task is not None:
        parts.append(f"task {task!r}")
    if key is not None:
        parts.append(f"key {key!r}")
    return ": ".join(parts)


def check_keys(raw: Mapping[str, Any], keys: Mapping[str, Key], place: str, what: str) -> None:
    """Refuse unknown keys (naming the closest known one), missing required ones and wrongly typed values."""
    for key in raw:
        if key not in keys:
            close = difflib.get_close_matches(str(key), list(keys), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TaskFileError(f"{place}: unknown key {key!r}; {hint}the keys of {what} are: {', '.join(keys)}")
    for key, spec in keys.items():
        if key not in raw:
            if spec.required:
                raise TaskFileError(f"{place}: key {key!r} is missing; write {key}: {spec.expects}")
            continue
        if not spec.check(raw[key]):
            got = type(raw[key]).__name__ if not isinstance(raw[key], str) else repr(raw[key])
            raise TaskFileError(f"{place}: key {key!r}: expected {spec.expects}, got {got}")


def parse_task_file(raw: Any, source: str) -> TaskFile:
    """Check a task file's structure: file keys, each task's kind and keys, unique names."""
    if not isinstance(raw, dict):
        raise TaskFileError(f"{source}: expected a mapping with a 'tasks:' list at the top, got {type(raw).__name__}")
    check_keys(raw, FILE_KEYS, source, "a task file")
    names: set[str] = set()
    for position, task in enumerate(raw["tasks"], start=1):
        label = task.get("name") if isinstance(task, dict) and isinstance(task.get("name"), str) else f"#{position}"
        if not isinstance(task, dict):
            raise TaskFileError(f"{where(source, label)}: expected a mapping (name:, kind:, ...), got {task!r}")
        kind = task.get("kind")
        if kind not in KEYS:
            raise TaskFileError(f"{where(source, label, 'kind')}: expected one of {', '.join(KEYS)}, got {kind!r}")
        check_keys(task, KEYS[kind], where(source, label), f"a {kind} task")
        if task["name"] in names:
            raise TaskFileError(f"{where(source, label, 'name')}: two tasks are called {label!r}; names must differ")
        names.add(task["name"])
    return TaskFile(source, raw.get("input_label", "Text"), tuple(raw["tasks"]), raw.get("adapter"))


def load_task_file(path: str, read: Callable[[str], bytes]) -> TaskFile:
    """Read and check a task file; ``read`` fetches bytes (local or gs://)."""
    import yaml

    try:
        text = read(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TaskFileError(f"{path}: cannot read the task file ({err}); check the path and its permissions") from err
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TaskFileError(f"{path}: not valid YAML or JSON: {err}") from err
    return parse_task_file(raw, path)
