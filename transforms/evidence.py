"""Evidence by occlusion: the words of a record that a classify decision rests on.

A record's text is cut into spans: its words, or, for a record of more than ``MAX_SPANS`` words, runs of
adjacent words (``ceil(words / MAX_SPANS)`` each), so a record never costs more than ``MAX_SPANS`` variants.
Each variant is the text with one span left out. The runner scores every variant's question in one engine
call per batch, after the template's shared head (instructions, labels, examples: computed once and cached by
the engine), so a variant costs what the record itself costs minus that head:
its text and the question's tail. A span's *drop* is the chosen label's (calibrated) probability with the
whole text minus its probability without that span; the evidence is the ``top_k`` spans with the largest
drops of at least ``MIN_DROP``: the words whose removal most lowers the chosen label's probability.

Occlusion sees one span at a time: when two phrases each carry the decision ("awful ... a disgrace"),
removing either leaves the other, and both show small drops. A record of fewer than two words has nothing to
leave out and gets no evidence (an empty list).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from common.text import prompt_safe

MAX_SPANS = 32  # variants scored per record, at most
MIN_WORDS = 2  # a shorter record has nothing to leave out
MIN_DROP = 0.001  # a drop below a tenth of a percentage point is noise, not evidence
DEFAULT_TOP_K = 3
MAX_TOP_K = 10
WORD = re.compile(r"\S+")
EDGE_PUNCTUATION = "\"'“”‘’()[]{}<>.,;:!?…"

EVIDENCE_TYPE = pa.list_(
    pa.struct([pa.field("text", pa.string(), nullable=False), pa.field("drop", pa.float64(), nullable=False)])
)


@dataclass(frozen=True)
class Span:
    """One occluded piece of a record: its characters ``[start, end)`` and how the evidence shows it."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Explain:
    """A task's evidence setting: how many spans its rows list."""

    top_k: int = DEFAULT_TOP_K

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}")


def _shown(piece: str) -> str:
    """A span as the evidence shows it: surrounding punctuation trimmed (kept when that is all it is)."""
    return piece.strip(EDGE_PUNCTUATION) or piece


def spans(text: str, max_spans: int = MAX_SPANS) -> tuple[Span, ...]:
    """The spans of ``text`` to leave out one at a time: words, grouped into runs when there are more than
    ``max_spans``; none for a text of fewer than MIN_WORDS words."""
    if max_spans < 2:
        raise ValueError(f"max_spans must be at least 2, got {max_spans}")
    words = list(WORD.finditer(text))
    if len(words) < MIN_WORDS:
        return ()
    size = math.ceil(len(words) / max_spans)
    out = []
    for first in range(0, len(words), size):
        group = words[first : first + size]
        start, end = group[0].start(), group[-1].end()
        out.append(Span(start, end, _shown(text[start:end])))
    return tuple(out)


def variants(text: str, found: Sequence[Span]) -> tuple[str, ...]:
    """The record's prompt text without each span in turn (prompt-safe, as the record itself goes in)."""
    return tuple(prompt_safe(f"{text[: s.start]} {text[s.end :]}", keep_paragraphs=True) for s in found)


def top_evidence(found: Sequence[Span], full: float, without: Sequence[float], top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` spans whose removal lowers the probability ``full`` the most (by at least MIN_DROP), as
    ``{text, drop}``, largest drop first (earlier span first on ties)."""
    if len(found) != len(without):
        raise ValueError(f"{len(without)} variant scores for {len(found)} spans")
    drops = [(full - p, i) for i, p in enumerate(without) if full - p >= MIN_DROP]
    drops.sort(key=lambda item: (-item[0], item[1]))
    return [{"text": found[i].text, "drop": drop} for drop, i in drops[:top_k]]
