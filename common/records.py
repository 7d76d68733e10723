"""The record a pipeline reads and the dead letter it writes when a record produces no result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The tagged output that carries dead letters out of every step that can fail a record.
ERRORS_TAG = "errors"


@dataclass(frozen=True)
class Record:
    """One validated input record. ``extra`` holds every other field, passed through to the output."""

    id: str
    text: str
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the raw input, truncated: what a dead letter shows
    truncated: bool = False  # the text was cut to --max_record_bytes (--on_overflow truncate)


@dataclass(frozen=True)
class DeadLetter:
    """A record (or line) that produced no result, and why. ``stage`` says where it failed: read, validate,
    prompt, inference, parse or bigquery."""

    id: str | None
    stage: str
    error: str
    input: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, "error": self.error, "input": self.input}
