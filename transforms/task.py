"""What a task is, and how several tasks run as one: a ``TaskSet`` asks every task's questions about a record in
one request and turns the answers into one row with every task's columns.

A task is a small frozen object with a few jobs: its section of the prompt's shared head (instructions, labels,
examples), the tails it asks after the record, the questions at the end of those tails, and how it turns the
answers into its typed columns. Tasks hold no Beam or torch state. A task that ``explains`` its decision also
gets its ``evidence`` from the request's variants of the text (``transforms.evidence``).
"""

from __future__ import annotations

import datetime
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from common.fingerprint import digest, result_key
from common.records import Record
from common.text import extra_json, prompt_safe
from inference.requests import (
    TEXT_FIELD,
    Answer,
    Piece,
    PromptTemplate,
    Question,
    RecordRequest,
    RecordResponse,
    Rendering,
    Slot,
)
from transforms.evidence import Span, spans, variants
from transforms.prompting import CHAT, DATA_NOTE, DELIMITER

STYLES = ("completion", CHAT)
LINEAGE_FIELDS = [
    pa.field("truncated", pa.bool_(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("adapter", pa.string(), nullable=True),  # --adapter: its source and sha256 (None without one)
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("output_tokens", pa.int64(), nullable=False),
    pa.field("chunks", pa.int64(), nullable=False),  # pieces the document was read in (--long_documents chunk)
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("result_key", pa.string(), nullable=False),  # common.fingerprint: what --skip_done matches on
    pa.field("extra", pa.string(), nullable=False),
    # The model call that answered the record: its wall time shared out by tokens (what this record cost),
    # and when it ended; the run report's throughput and slowest records.
    # Null in rows carried (--skip_done) from a version that did not record them.
    pa.field("inference_ms", pa.float64(), nullable=True),
    pa.field("inferred_at", pa.timestamp("ms", tz="UTC"), nullable=True),
]
TIMING_COLUMNS = ("inference_ms", "inferred_at")  # differ between two runs of the same job


class InferenceError(RuntimeError):
    """The engine refused one request (its message says why); the record becomes a dead letter."""


class Task(ABC):
    """One task of a task file: its part of the prompt and its typed columns."""

    name: str
    standalone: bool = False  # lays the record out itself, in its own template (see ``rendering``)

    @abstractmethod
    def section(self, style: str, input_label: str) -> str:
        """The task's part of the shared head: instructions, labels, examples (trusted text)."""

    @abstractmethod
    def tails(self, style: str) -> tuple[tuple[Piece, ...], ...]:
        """What follows the record for each question, starting with the record's closing delimiter."""

    @abstractmethod
    def questions(self) -> tuple[Question, ...]:
        """One per tail: the words scored, or what to generate."""

    @abstractmethod
    def columns(self, answers: tuple[Answer, ...]) -> dict[str, Any]:
        """The task's columns from its answers; ValueError for output that breaks the schema."""

    @abstractmethod
    def fields(self) -> list[pa.Field]:
        """Arrow fields of the task's columns, in output order (unprefixed)."""

    def fingerprint(self) -> str:
        """A hash of everything that decides this task's output: its class and its whole state (instructions,
        labels and their words, examples, sampling params, calibration). Read from the instance, so a new task
        kind is fingerprinted without code of its own; any change to its state makes earlier results stale."""
        return digest({"task": type(self).__qualname__, "state": vars(self)})

    def slots(self) -> set[str]:
        """The record fields the task's prompt reads."""
        return {TEXT_FIELD} | {
            p.name for style in STYLES for tail in self.tails(style) for p in tail if isinstance(p, Slot)
        }

    def rendering(self, style: str, input_label: str) -> Rendering:
        """A standalone task's own prompt (trunk and tails)."""
        raise NotImplementedError(f"{type(self).__name__} shares the record block; it has no prompt of its own")

    @property
    def explains(self) -> bool:
        """Whether the task's rows carry ``evidence`` (its questions are scored on variants of the text)."""
        return False

    def evidence(self, answers: tuple[Answer, ...], spans: tuple[Span, ...]) -> list[dict[str, Any]]:
        """The ``evidence`` column: the spans the answer rests on, with their drops."""
        raise NotImplementedError(f"{type(self).__name__} does not explain its answers")


class TaskSet:
    """Tasks asked together about each record: one request, one row.

    ``prefixed`` (task files) names columns ``<task>_<column>``; a single task run from a --task shortcut keeps
    today's unprefixed columns and a ``task`` column.
    """

    def __init__(
        self,
        tasks: tuple[Task, ...],
        input_label: str = "Text",
        prefixed: bool = True,
        gold_fields: Mapping[str, str] | None = None,
        adapter: str | None = None,
    ) -> None:
        """``gold_fields``: task name -> the input field holding its known label (the run report scores the
        task against it); it changes no row, so it is not part of the fingerprint. ``adapter``: the task file's
        adapter: key, which the job runs with unless --adapter names one."""
        if not tasks:
            raise ValueError("a task set needs at least one task")
        if not prefixed and len(tasks) != 1:
            raise ValueError("unprefixed columns need exactly one task")
        unknown = sorted(set(gold_fields or {}) - {task.name for task in tasks})
        if unknown:
            raise ValueError(f"gold fields for tasks that are not in the set: {unknown}")
        self.tasks = tasks
        self.input_label = input_label
        self.prefixed = prefixed
        self.gold_fields = dict(gold_fields or {})
        self.explains = any(task.explains for task in tasks)
        self.adapter = adapter
        self.templates, self._spans = self._templates()
        self._slots = sorted(set().union(*(task.slots() for task in tasks)))
        names = self.schema().names
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # e.g. task "run" with a property "id" beside the lineage column run_id
            raise ValueError(f"column {twice[0]!r} would appear twice in the rows; rename a task or a property")

    @property
    def name(self) -> str:
        return ",".join(task.name for task in self.tasks)

    def _templates(self) -> tuple[tuple[PromptTemplate, ...], list[tuple[int, int, int]]]:
        """The shared template (every task that reads the record block) and one per standalone task, with
        each task's answers as (template, first question, question count)."""
        shared = [task for task in self.tasks if not task.standalone]
        templates: list[PromptTemplate] = []
        where: dict[str, tuple[int, int, int]] = {}
        if shared:
            renderings = {style: self._shared_rendering(shared, style) for style in STYLES}
            questions = tuple(q for task in shared for q in task.questions())
            templates.append(PromptTemplate(renderings["completion"], renderings[CHAT], questions))
            start = 0
            for task in shared:
                where[task.name] = (0, start, len(task.questions()))
                start += len(task.questions())
        for task in self.tasks:
            if task.standalone:
                where[task.name] = (len(templates), 0, len(task.questions()))
                templates.append(
                    PromptTemplate(
                        task.rendering("completion", self.input_label),
                        task.rendering(CHAT, self.input_label),
                        task.questions(),
                    )
                )
        return tuple(templates), [where[task.name] for task in self.tasks]

    def _shared_rendering(self, shared: list[Task], style: str) -> Rendering:
        head = "".join(task.section(style, self.input_label) for task in shared)
        head += DATA_NOTE if style == CHAT else ""
        trunk = (f"{head}{self.input_label}: {DELIMITER}", Slot(TEXT_FIELD))
        tails = tuple(tail for task in shared for tail in task.tails(style))
        return Rendering(trunk, tails, candidate_prefix="" if style == CHAT else " ")

    def build_request(self, record: Record) -> RecordRequest:
        """The request for one record; ValueError (a dead letter) when it lacks a field a prompt names."""
        values = {}
        for name in self._slots:
            if name == TEXT_FIELD:  # paragraph bounds kept (read as spaces) for --long_documents chunk
                values[name] = prompt_safe(record.text, keep_paragraphs=True)
            elif name == "id":
                values[name] = prompt_safe(record.id)
            elif name in record.extra and record.extra[name] is not None:
                raw = record.extra[name]
                values[name] = prompt_safe(raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False))
            else:
                raise ValueError(
                    f"the record has no field {name!r}, which a prompt of {self.name} names "
                    f"(fields: {sorted(record.extra)[:10]})"
                )
        found = variants(record.text, spans(record.text)) if self.explains else ()
        return RecordRequest(values, self.templates, found)

    def fingerprint(self) -> str:
        """A hash of what decides the rows: every task's fingerprint, the input label, the column naming."""
        tasks = [task.fingerprint() for task in self.tasks]
        return digest({"tasks": tasks, "input_label": self.input_label, "prefixed": self.prefixed})

    def schema(self) -> pa.Schema:
        head = [pa.field("id", pa.string(), nullable=False)]
        if not self.prefixed:
            head.append(pa.field("task", pa.string(), nullable=False))
        columns = [self._column(task, f) for task in self.tasks for f in task.fields()]
        return pa.schema(head + columns + LINEAGE_FIELDS)

    def _column(self, task: Task, field: pa.Field) -> pa.Field:
        return field.with_name(f"{task.name}_{field.name}") if self.prefixed else field

    def to_row(self, record: Record, response: RecordResponse, run_id: str, fingerprint: str) -> dict[str, Any]:
        """The output row: id, every task's columns, lineage, pass-through fields. ``fingerprint``: the job's
        (``common.fingerprint.job_fingerprint``), hashed with the record into ``result_key``."""
        if response.error:
            raise InferenceError(response.error)
        expected = sum(len(template.questions) for template in self.templates)
        if len(response.answers) != expected:
            raise ValueError(f"{len(response.answers)} answers for {expected} questions")
        offsets = [0]
        for template in self.templates:
            offsets.append(offsets[-1] + len(template.questions))
        row: dict[str, Any] = {"id": record.id}
        if not self.prefixed:
            row["task"] = self.tasks[0].name
        occluded = spans(record.text) if self.explains else ()
        for task, (template, first, count) in zip(self.tasks, self._spans, strict=True):
            start = offsets[template] + first
            answers = response.answers[start : start + count]
            columns = task.columns(answers)
            if task.explains:
                columns["evidence"] = task.evidence(answers, occluded)
            for key, value in columns.items():
                row[f"{task.name}_{key}" if self.prefixed else key] = value
        row.update(
            truncated=response.truncated or record.truncated,
            model=response.model,
            adapter=response.adapter,
            prompt_tokens=response.prompt_tokens,
            output_tokens=response.output_tokens,
            chunks=response.chunks,
            run_id=run_id,
            result_key=result_key(record.id, record.text, fingerprint),
            extra=extra_json(record.extra),
            inference_ms=response.inference_ms,
            # to the millisecond, as the schema declares: JSON Lines and Parquet rows then say the same
            inferred_at=datetime.datetime.fromtimestamp(round(response.finished_at, 3), datetime.timezone.utc),
        )
        return row
