"""Rendering a request into the token ids the engine runs: the tasks' template around the record's fields.

The prompt style is resolved once per model (Gemma's turn format for instruction-tuned checkpoints, plain
completion prompts for base ones). Trusted template text is tokenized once per string, not once per record.
The template may hold control tokens (the turn markers); record fields may not, so each is encoded on its
own with ``allow_special=False``: a literal "<start_of_turn>" in a record becomes plain characters and can
never open a turn or end the prompt's delimiters early. A record too long for the context has its text cut
by tokens, never the instructions; or, with --long_documents chunk, split into pieces that fit
(``split_text``, at paragraph and sentence bounds) for the runner to read one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.text import PARAGRAPH_BREAK
from inference.chunking import split_to_fit
from inference.requests import (
    TEXT_FIELD,
    Piece,
    PromptTemplate,
    PromptTooLong,
    Question,
    RecordRequest,
    Rendering,
    Slot,
)
from inference.settings import Overflow, PromptStyle

_CHAT_SLOT = "\x00GEMMA-BEAM-DOCUMENT\x00"
_TEXT_SLOT = Slot(TEXT_FIELD)


def resolve_style(style: PromptStyle, tokenizer: Any) -> str:
    """``auto`` becomes ``chat`` for checkpoints with a chat template (instruction-tuned), else ``completion``."""
    if style == "auto":
        return "chat" if tokenizer.has_chat_template else "completion"
    return style


@dataclass(frozen=True)
class EncodedPrompt:
    """A record's prompt as token ids: ``trunk`` (starting with ``head``) then one tail per question."""

    head: tuple[int, ...]  # BOS + the template's leading trusted text: the same for every record
    trunk: list[int]
    tails: list[list[int]]
    truncated: bool

    def full(self, question: int) -> list[int]:
        return self.trunk + self.tails[question]

    @property
    def tokens(self) -> int:
        """Tokens the model reads for the record: the trunk once, plus every tail."""
        return len(self.trunk) + sum(len(tail) for tail in self.tails)


class PromptEncoder:
    """Token ids of requests' prompts and of the words they score, for one tokenizer and context."""

    def __init__(
        self,
        tokenizer: Any,
        max_context: int,
        style: PromptStyle = "auto",
        max_prompt_tokens: int | None = None,
        overflow: Overflow = "truncate",
    ) -> None:
        self._tokenizer = tokenizer
        self.max_context = max_context
        self.style = resolve_style(style, tokenizer)
        self._max_prompt_tokens = max_prompt_tokens
        self._overflow = overflow
        self._trusted: dict[tuple[str, bool], tuple[int, ...]] = {}
        self._candidate_ids: dict[tuple[str, ...], tuple[tuple[int, ...], ...]] = {}
        self._rendered: dict[PromptTemplate, tuple[tuple[Piece, ...], tuple[tuple[Piece, ...], ...]]] = {}

    def candidates(self, template: PromptTemplate, question: int) -> tuple[str, ...]:
        """The strings scored for a question's words in the resolved prompt style."""
        prefix = template.rendering(self.style).candidate_prefix
        return tuple(prefix + word for word in template.questions[question].words)

    def candidate_ids(self, template: PromptTemplate, question: int) -> tuple[tuple[int, ...], ...]:
        candidates = self.candidates(template, question)
        if candidates not in self._candidate_ids:
            encoded = self._tokenizer.encode_batch(list(candidates), add_bos=False)
            self._candidate_ids[candidates] = tuple(tuple(ids) for ids in encoded)
        return self._candidate_ids[candidates]

    def head(self, template: PromptTemplate) -> tuple[int, ...]:
        """BOS + the template's leading trusted text: every prompt of the template starts with these ids."""
        trunk, _ = self._pieces(template)
        return self._trusted_ids(trunk[0], bos=True)

    def reserve(self, question: Question, template: PromptTemplate, index: int) -> int:
        """Context tokens a question needs after its prompt: its output budget, or its longest word."""
        if question.params is not None:
            return question.params.max_new_tokens
        return max(len(ids) for ids in self.candidate_ids(template, index))

    def request_tokens(self, request: RecordRequest) -> int:
        """Tokens a request costs the engine: its prompts (each trunk once, every tail), plus the words it
        scores or the most it may generate, plus each explained question's variants after the shared head
        (what ``pipelines.plan`` sizes a job by)."""
        total = 0
        for template in request.templates:
            total += self.encode(request.fields, template).tokens
            for index, question in enumerate(template.questions):
                if question.params is not None:
                    total += question.params.max_new_tokens
                    continue
                words = sum(len(ids) for ids in self.candidate_ids(template, index))
                total += words
                if question.explain:
                    for text in request.variants:
                        total += words - len(self.head(template))
                        total += len(self.encode({**request.fields, TEXT_FIELD: text}, template).full(index))
        return total

    def encode(self, values: Mapping[str, str], template: PromptTemplate, reserve: bool = True) -> EncodedPrompt:
        """Token ids of a template's prompt around a record's field values; the text is cut (never the
        instructions) when it is too long. ``reserve=False`` leaves no room for answers (calibration)."""
        trunk_pieces, tail_pieces = self._pieces(template)
        fields = self._field_ids(values, trunk_pieces, tail_pieces)
        trunk = self._join(trunk_pieces, fields, first=True)
        tails = [self._join(pieces, fields, first=False) for pieces in tail_pieces]
        reserves = [self.reserve(q, template, i) if reserve else 0 for i, q in enumerate(template.questions)]
        over = [len(trunk) + len(tail) - self._limit(r) for r, tail in zip(reserves, tails, strict=True)]
        binding = max(range(len(over)), key=over.__getitem__)  # the question that leaves the least room
        if over[binding] <= 0:
            return EncodedPrompt(self.head(template), trunk, tails, False)
        total, limit = len(trunk) + len(tails[binding]), self._limit(reserves[binding])
        if self._overflow == "error":
            raise PromptTooLong(
                f"prompt has {total} tokens, over the limit of {limit} (context {self.max_context} minus "
                f"{reserves[binding]} reserved for the output, or --max_prompt_tokens); "
                "shorten the record, raise --max_prompt_tokens or pass --on_overflow truncate"
            )
        text = fields.get(TEXT_FIELD, [])
        # The text may appear in the trunk and in tails: every copy shrinks by the same cut.
        copies = [_count(trunk_pieces) + _count(tail) for tail in tail_pieces]
        cut = [(excess, n) for excess, n in zip(over, copies, strict=True) if excess > 0]
        room = min(len(text) - -(-excess // n) if n else 0 for excess, n in cut)
        if room <= 0:
            raise PromptTooLong(
                f"the prompt template alone needs {total - copies[binding] * len(text)} tokens but only {limit} "
                "fit; lower --max_new_tokens or raise --max_prompt_tokens"
            )
        fields = {**fields, TEXT_FIELD: text[:room]}
        trunk = self._join(trunk_pieces, fields, first=True)
        tails = [self._join(pieces, fields, first=False) for pieces in tail_pieces]
        return EncodedPrompt(self.head(template), trunk, tails, True)

    def text_room(self, values: Mapping[str, str], template: PromptTemplate) -> int:
        """Tokens the record's text may take in a prompt of ``template`` with every question fitting whole."""
        trunk_pieces, tail_pieces = self._pieces(template)
        fields = self._field_ids({**values, TEXT_FIELD: ""}, trunk_pieces, tail_pieces)
        trunk = self._join(trunk_pieces, fields, first=True)
        rooms = []
        for index, (question, pieces) in enumerate(zip(template.questions, tail_pieces, strict=True)):
            copies = _count(trunk_pieces) + _count(pieces)
            if copies:
                base = len(trunk) + len(self._join(pieces, fields, first=False))
                rooms.append((self._limit(self.reserve(question, template, index)) - base) // copies)
        return min(rooms) if rooms else self.max_context

    def split_text(self, values: Mapping[str, str], template: PromptTemplate) -> list[str]:
        """The record's text as pieces that each fit a prompt of ``template`` whole (``inference.chunking``)."""
        room = self.text_room(values, template)
        if room < 1:
            raise PromptTooLong(
                "the prompt template alone leaves no room for the record's text; lower --max_new_tokens or raise "
                "--max_prompt_tokens"
            )
        return split_to_fit(values[TEXT_FIELD], room, self._text_tokens, self._cut_by_tokens)

    def _text_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text.replace(PARAGRAPH_BREAK, " "), add_bos=False, allow_special=False))

    def _cut_by_tokens(self, text: str, room: int) -> list[str]:
        """A text with no bound to split at (one huge word), cut every ``room`` tokens."""
        ids = self._tokenizer.encode(text.replace(PARAGRAPH_BREAK, " "), add_bos=False, allow_special=False)
        return [self._tokenizer.decode(ids[i : i + room]) for i in range(0, len(ids), room)]

    def _limit(self, reserve: int) -> int:
        limit = self.max_context - reserve
        return limit if self._max_prompt_tokens is None else min(limit, self._max_prompt_tokens)

    def _field_ids(
        self, values: Mapping[str, str], trunk: tuple[Piece, ...], tails: tuple[tuple[Piece, ...], ...]
    ) -> dict[str, list[int]]:
        names = {p.name for pieces in (trunk, *tails) for p in pieces if isinstance(p, Slot)}
        missing = sorted(names - set(values))
        if missing:
            raise ValueError(f"the record has no field {', '.join(repr(m) for m in missing)} for the prompt")
        ordered = sorted(names)
        texts = [values[n].replace(PARAGRAPH_BREAK, " ") for n in ordered]  # paragraph marks read as spaces
        encoded = self._tokenizer.encode_batch(texts, add_bos=False, allow_special=False)
        return dict(zip(ordered, encoded, strict=True))

    def _join(self, pieces: tuple[Piece, ...], fields: dict[str, list[int]], first: bool) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if isinstance(piece, Slot):
                ids.extend(fields[piece.name])
            else:
                ids.extend(self._trusted_ids(piece, bos=first and i == 0))
        return ids

    def _trusted_ids(self, text: str, bos: bool) -> tuple[int, ...]:
        key = (text, bos)
        if key not in self._trusted:
            self._trusted[key] = tuple(self._tokenizer.encode(text, add_bos=bos)) if text or bos else ()
        return self._trusted[key]

    def _pieces(self, template: PromptTemplate) -> tuple[tuple[Piece, ...], tuple[tuple[Piece, ...], ...]]:
        """The resolved style's trunk and tails, wrapped in the turn format for chat."""
        if template not in self._rendered:
            rendering = template.rendering(self.style)
            self._rendered[template] = (
                self._wrap(rendering) if self.style == "chat" else (rendering.trunk, rendering.tails)
            )
        return self._rendered[template]

    def _wrap(self, rendering: Rendering) -> tuple[tuple[Piece, ...], tuple[tuple[Piece, ...], ...]]:
        wrapped = self._tokenizer.chat_prompt(_CHAT_SLOT)
        before, slot, after = wrapped.partition(_CHAT_SLOT)
        if not slot:
            raise ValueError("the tokenizer's chat_prompt dropped the document; cannot build a chat prompt")
        trunk = (before + rendering.trunk[0], *rendering.trunk[1:])
        tails = tuple(_append_text(tail, after) for tail in rendering.tails)
        return trunk, tails


def _append_text(pieces: tuple[Piece, ...], text: str) -> tuple[Piece, ...]:
    if pieces and isinstance(pieces[-1], str):
        return (*pieces[:-1], pieces[-1] + text)
    return (*pieces, text)


def _count(pieces: tuple[Piece, ...]) -> int:
    """How many times the record's text appears in these pieces."""
    return sum(1 for piece in pieces if piece == _TEXT_SLOT)
