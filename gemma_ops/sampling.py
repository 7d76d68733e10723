"""Sampling parameters and pure, batched sampling functions.

Every request carries its own SamplingParams and, when it samples, its own torch.Generator seeded from
``SamplingParams.seed``: the tokens a request draws never depend on which other requests share its batch.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gemma_ops.fused import first_max


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes. ``temperature == 0`` (or ``top_k == 1``) is greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int | None = None  # None with temperature > 0: seeded from the prompt's tokens (reproducible)
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings; matched text is cut from the output
    ignore_eos: bool = False
    json_schema: str | None = None  # JSON text: decoding is constrained so the output is a document it accepts

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            raise ValueError(f"json_schema must be the schema's JSON text, got {type(self.json_schema).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits [V] outside the top-k and the top-p nucleus with -inf (float32 in, float32 out)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep a token when the mass strictly before it is < top_p: the top token always survives.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Draw one token from logits [V] under ``params``; greedy when the params say so."""
    if params.greedy:
        return int(torch.argmax(logits))
    scaled = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_batch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    greedy: Callable[[torch.Tensor], torch.Tensor] = first_max,
) -> list[int]:
    """One token per row of logits [B, V]: greedy rows share one ``greedy`` call (each row's first maximum; one
    device sync for the whole batch); sampling rows draw on the host from their own generator, so no batch-mate
    changes what they draw."""
    greedy_ids = greedy(logits).tolist()
    return [
        greedy_ids[row] if p.greedy else sample_one(logits[row].float().cpu(), p, generator)
        for row, (p, generator) in enumerate(zip(params, generators, strict=True))
    ]


def content_seed(ids: Sequence[int]) -> int:
    """Seed for a sampling request without one: from its prompt, so no batch-mate or position changes it."""
    return zlib.crc32(array("q", ids).tobytes())


def make_generator(params: SamplingParams, fallback_seed: int) -> torch.Generator | None:
    """A CPU generator for a sampling request (None for greedy ones)."""
    if params.greedy:
        return None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(params.seed if params.seed is not None else fallback_seed)
    return gen
