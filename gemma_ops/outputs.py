"""What the engine returns: one result per request, in input order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    finish_reason: "stop" (EOS, <end_of_turn> or a stop string), "length" (max_new_tokens or the context end)
    or "error" (the request was refused; ``error`` says why and the other requests of the call are unaffected).
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class ScoreResult:
    """log P(candidate | prompt) for each candidate of one prompt; behaves as that row of floats."""

    logprobs: tuple[float, ...]
    prompt_tokens: int
    error: str | None = None

    def __getitem__(self, index: int) -> float:
        return self.logprobs[index]

    def __len__(self) -> int:
        return len(self.logprobs)

    def __iter__(self) -> Iterator[float]:
        return iter(self.logprobs)
