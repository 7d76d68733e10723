"""Text helpers for untrusted input: previews for dead letters, control-character stripping, prompt-safe
documents, strict JSON."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

INPUT_PREVIEW_CHARS = 2000
WHITESPACE = re.compile(r"\s+")
_BLANK_LINE = re.compile(r"\n\s*\n")
# Between paragraphs of a prompt-safe document that keeps them: a bound --long_documents chunk may split at.
# The prompt encoder renders it as a space, so the model reads the same one-line text either way.
PARAGRAPH_BREAK = "\u2029"


def preview(text: str, limit: int = INPUT_PREVIEW_CHARS) -> str:
    """The start of ``text``, marked when cut, for dead-letter rows."""
    return text if len(text) <= limit else text[:limit] + f"...[{len(text) - limit} more chars]"


def strip_control_chars(text: str) -> str:
    """Drop control and format characters (keeping newlines and tabs) that only confuse the model."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))


def prompt_safe(text: str, keep_paragraphs: bool = False) -> str:
    """Untrusted text as it goes between a prompt's triple-quote delimiters: one line, no fences.

    Collapsing whitespace keeps a record from faking the next few-shot line ("Sentiment: ..."), and the
    delimiter swap keeps it from closing its own quote early. ``keep_paragraphs`` marks where blank lines
    were with PARAGRAPH_BREAK (never a line break the model sees), for splitting a long document.
    """
    text = text.replace('"""', "\u201c\u201c\u201c")
    if not keep_paragraphs:
        return WHITESPACE.sub(" ", text).strip()
    paragraphs = (WHITESPACE.sub(" ", part).strip() for part in _BLANK_LINE.split(text))
    return PARAGRAPH_BREAK.join(part for part in paragraphs if part)


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
