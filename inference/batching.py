"""How much a request weighs when Beam batches elements for RunInference: estimated tokens, before tokenizing
(the tokenizer lives with the model, in another process)."""

from __future__ import annotations

from typing import Any

from inference.requests import RecordRequest, Slot

# English text averages about 4 UTF-8 bytes per Gemma token; 3 errs on the heavy side.
BYTES_PER_TOKEN_ESTIMATE = 3


def estimate_tokens(element: Any) -> int:
    """Batch weight of a request or a ``(key, request)`` pair: estimated prompt + output tokens (the completion
    rendering's trunk once and every tail, the record's fields, each question's output budget), plus, for a
    question that explains, each variant of the text with that question's tail."""
    request: RecordRequest = element[1] if isinstance(element, tuple) else element
    size, tokens = 0, 0
    for template in request.templates:
        rendering = template.completion
        for piece in (p for pieces in (rendering.trunk, *rendering.tails) for p in pieces):
            size += _bytes(piece, request)
        for question, tail in zip(template.questions, rendering.tails, strict=True):
            tokens += question.params.max_new_tokens if question.params is not None else 2 * len(question.words)
            if question.explain and request.variants:
                tail_size = sum(_bytes(piece, request) for piece in tail)
                size += sum(len(text.encode("utf-8")) + tail_size for text in request.variants)
                tokens += 2 * len(question.words) * len(request.variants)
    return size // BYTES_PER_TOKEN_ESTIMATE + 1 + tokens


def _bytes(piece: str | Slot, request: RecordRequest) -> int:
    return len((request.fields.get(piece.name, "") if isinstance(piece, Slot) else piece).encode("utf-8"))
