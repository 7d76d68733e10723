"""Values that compare equal to any result of the right kind: for row columns that differ between runs
(``transforms.task.TIMING_COLUMNS``), inside expected rows that Beam's ``equal_to`` compares whole."""

from __future__ import annotations

import datetime
from typing import Any


class PositiveFloat:
    """Equal to any float above zero (a measured duration)."""

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, float) and other > 0.0

    def __repr__(self) -> str:
        return "<a float > 0>"


class RecentUtc:
    """Equal to a timezone-aware UTC datetime within the last hour (when a row was made)."""

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, datetime.datetime) or other.utcoffset() != datetime.timedelta(0):
            return False
        age = datetime.datetime.now(datetime.timezone.utc) - other
        return datetime.timedelta(0) <= age < datetime.timedelta(hours=1)

    def __repr__(self) -> str:
        return "<a UTC datetime in the last hour>"


def timing() -> dict[str, Any]:
    """The timing columns of a row made just now, as expected-row entries."""
    return {"inference_ms": PositiveFloat(), "inferred_at": RecentUtc()}


def untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without their timing columns, for comparing two runs of the same job."""
    from transforms.task import TIMING_COLUMNS

    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def untimed_responses(responses: list[Any]) -> list[Any]:
    """Runner responses with their timing zeroed, for comparing two runs of the same requests."""
    import dataclasses

    return [dataclasses.replace(r, inference_ms=0.0, finished_at=0.0) for r in responses]
