"""How much a request weighs when Beam batches elements for RunInference: estimated tokens, before tokenizing
(the tokenizer lives with the model, in another process)."""

from __future__ import annotations

from typing import Any

from inference.requests import GenerateRequest

# English text averages about 4 UTF-8 bytes per Gemma token; 3 errs on the heavy side.
BYTES_PER_TOKEN_ESTIMATE = 3


def estimate_tokens(element: Any) -> int:
    """Batch weight of a request or a ``(key, request)`` pair: estimated prompt + output tokens."""
    request = element[1] if isinstance(element, tuple) else element
    template = request.template.completion
    size = len((template.prefix + request.document + template.suffix).encode("utf-8"))
    tokens = size // BYTES_PER_TOKEN_ESTIMATE + 1
    if isinstance(request, GenerateRequest):
        tokens += request.params.max_new_tokens
    else:
        tokens += 2 * len(request.labels)
    return tokens
