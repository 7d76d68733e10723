"""A runner call's responses: each request's answers, the tokens it read, and its share of the call's time."""

from __future__ import annotations

import dataclasses
from typing import Any

from inference.long_documents import LongReading
from inference.prompts import EncodedPrompt
from inference.requests import Answer, RecordRequest, RecordResponse, RunnerInfo


def generated_answer(completion: Any) -> Answer:
    return Answer(text=completion.text, finish_reason=completion.finish_reason, output_tokens=len(completion.token_ids))


def timed(responses: list[RecordResponse], seconds: float, finished_at: float) -> list[RecordResponse]:
    """Responses with the call's wall time shared out by the tokens each read and wrote, and its end time."""
    weights = [r.prompt_tokens + r.output_tokens if not r.error else 0 for r in responses]
    total = sum(weights) or 1
    return [
        dataclasses.replace(r, inference_ms=1000.0 * seconds * w / total, finished_at=finished_at)
        for r, w in zip(responses, weights, strict=True)
    ]


def reading_cost(
    index: int, prompts: list[EncodedPrompt], readings: dict[tuple[int, int, int], LongReading]
) -> tuple[int, bool, int]:
    """(prompt tokens read, whether any text was cut, chunks) for one request: each trunk once and every tail
    of the questions asked in one prompt, plus what reading its long texts in chunks took."""
    own = {(t, q): reading for (i, t, q), reading in readings.items() if i == index}
    tokens, truncated = 0, False
    for t, prompt in enumerate(prompts):
        asked = [q for q in range(len(prompt.tails)) if (t, q) not in own]
        if asked:
            tokens += len(prompt.trunk) + sum(len(prompt.tails[q]) for q in asked)
            truncated |= prompt.truncated
    tokens += sum(reading.prompt_tokens for reading in own.values())
    truncated |= any(reading.truncated for reading in own.values())
    return tokens, truncated, max((reading.chunks for reading in own.values()), default=1)


def record_response(
    index: int,
    request: RecordRequest,
    prompts: list[EncodedPrompt],
    answers: dict[tuple[int, int, int], Answer],
    error: str | None,
    readings: dict[tuple[int, int, int], LongReading],
    variant_tokens: int,
    info: RunnerInfo,
    adapter: str | None,
) -> RecordResponse:
    """Request ``index``'s response: its answers in template and question order (or its error), and what it read."""
    tokens, truncated, chunks = reading_cost(index, prompts, readings)
    tokens += variant_tokens  # each explained variant, after the shared head
    style, model = info.style, info.model_name
    if error is not None:
        return RecordResponse((), tokens, truncated, style, model, error, chunks, adapter=adapter)
    own = tuple(
        answers[(index, t, q)] for t, template in enumerate(request.templates) for q in range(len(template.questions))
    )
    return RecordResponse(own, tokens, truncated, style, model, chunks=chunks, adapter=adapter)
