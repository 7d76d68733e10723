"""Text helpers for untrusted input: previews for dead letters, control-character stripping, strict JSON."""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

INPUT_PREVIEW_CHARS = 2000


def preview(text: str, limit: int = INPUT_PREVIEW_CHARS) -> str:
    """The start of ``text``, marked when cut, for dead-letter rows."""
    return text if len(text) <= limit else text[:limit] + f"...[{len(text) - limit} more chars]"


def strip_control_chars(text: str) -> str:
    """Drop control and format characters (keeping newlines and tabs) that only confuse the model."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))


def _finite(value: Any) -> Any:
    """NaN and infinities (Python's JSON reader accepts them, Parquet floats hold them) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def extra_json(extra: dict[str, Any]) -> str:
    """Pass-through fields as one strict JSON object string (dates and other non-JSON values as strings,
    non-finite numbers as null), so every JSON reader and BigQuery's JSON type can parse it."""
    return json.dumps(_finite(extra), ensure_ascii=False, sort_keys=True, default=str, allow_nan=False)
