"""Splitting a document longer than the context into pieces that fit, at the most natural bounds.

Paragraphs first (``common.text.PARAGRAPH_BREAK``, where the record had blank lines), then sentences, then
words; a single word longer than a piece (a pasted blob) is cut by tokens. Pieces are packed greedily, in
order, up to ``room`` tokens each, so a document is read whole in as few pieces as fit. Sizes are counted by
the caller's tokenizer: summed per unit while packing, and each packed piece checked once more, since a
tokenizer may merge across the joining space.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from common.text import PARAGRAPH_BREAK

Count = Callable[[str], int]
Cut = Callable[[str, int], list[str]]
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+")


def _paragraphs(text: str) -> list[str]:
    return text.split(PARAGRAPH_BREAK)


def _sentences(text: str) -> list[str]:
    return _SENTENCE_END.split(text)


def _words(text: str) -> list[str]:
    return text.split(" ")


_LEVELS = (_paragraphs, _sentences, _words)


def units(text: str, room: int, count: Count, cut: Cut, level: int = 0) -> list[str]:
    """``text`` as pieces of at most ``room`` tokens, each split at the coarsest bound that makes it fit."""
    text = text.strip()
    if not text:
        return []
    if count(text) <= room:
        return [text]
    if level == len(_LEVELS):
        return cut(text, room)
    parts = [part for part in _LEVELS[level](text) if part.strip()]
    if len(parts) <= 1:
        return units(text, room, count, cut, level + 1)
    return [unit for part in parts for unit in units(part, room, count, cut, level + 1)]


def _checked(group: list[str], room: int, count: Count) -> list[str]:
    """The group joined, or split in halves until each half fits (a lone unit fits by construction)."""
    text = " ".join(group)
    if len(group) == 1 or count(text) <= room:
        return [text]
    mid = len(group) // 2
    return _checked(group[:mid], room, count) + _checked(group[mid:], room, count)


def split_to_fit(text: str, room: int, count: Count, cut: Cut) -> list[str]:
    """The pieces to read ``text`` in, in order: one when it fits, else as few as the bounds allow."""
    if room < 1:
        raise ValueError(f"no room for the document: {room} tokens per piece")
    groups: list[list[str]] = []
    used = 0
    for unit in units(text, room, count, cut):
        size = count(unit) + 1  # the joining space may cost a token
        if groups and used + size <= room:
            groups[-1].append(unit)
            used += size
        else:
            groups.append([unit])
            used = size
    return [piece for group in groups for piece in _checked(group, room, count)]
