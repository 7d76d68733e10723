"""What every task is: a small frozen object that builds a request from a record, parses the model's
response into the task's typed columns, and declares their Arrow schema. Tasks hold no Beam or torch state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa

from common.records import Record
from common.text import extra_json
from inference.requests import Request, Response

LINEAGE_FIELDS = [
    pa.field("truncated", pa.bool_(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("output_tokens", pa.int64(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("extra", pa.string(), nullable=False),
]


class InferenceError(RuntimeError):
    """The engine refused one request (its message says why); the record becomes a dead letter."""


class Task(ABC):
    """A task: request building, response parsing and the typed output schema."""

    name: str

    @abstractmethod
    def build_request(self, record: Record) -> Request:
        """The model request for one record."""

    @abstractmethod
    def task_columns(self, response: Response) -> dict[str, Any]:
        """The task's own columns from a successful response; raise ValueError for output that breaks the
        schema (it becomes a dead letter)."""

    @abstractmethod
    def task_fields(self) -> list[pa.Field]:
        """Arrow fields of the task's own columns, in output order."""

    def schema(self) -> pa.Schema:
        head = [pa.field("id", pa.string(), nullable=False), pa.field("task", pa.string(), nullable=False)]
        return pa.schema(head + self.task_fields() + LINEAGE_FIELDS)

    def to_row(self, record: Record, response: Response, run_id: str) -> dict[str, Any]:
        """The output row: id, task, the task's columns, lineage, pass-through fields."""
        if response.error:
            raise InferenceError(response.error)
        output_tokens = getattr(response, "output_tokens", 0)
        row = {"id": record.id, "task": self.name}
        row.update(self.task_columns(response))
        row.update(
            truncated=response.truncated or record.truncated,
            model=response.model,
            prompt_tokens=response.prompt_tokens,
            output_tokens=output_tokens,
            run_id=run_id,
            extra=extra_json(record.extra),
        )
        return row
