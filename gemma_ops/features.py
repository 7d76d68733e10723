"""Features of prompts: the final-norm hidden states a classification head reads, one prefill per prompt.

A head needs no candidate branches and no output layer: each prompt is prefilled once (packed with others, no
KV cache) and its final-norm hidden states are pooled into one vector. Prompts that extend a shared prefix (a
template's head) attend to the prefix's keys and values, computed once, exactly as scoring does.

Pooling (``POOLINGS``):
- ``last``: the hidden state at the prompt's last token (what would predict the answer);
- ``mean``: the mean over the prompt's own tokens, those after the shared prefix (the prefix is the same for
  every prompt, so it carries nothing about the record); over all its tokens when it has no prefix;
- ``last+mean``: both, concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gemma_ops.model import GemmaModel, PrefixKV, Segment
from gemma_ops.scoring import PrefixStore, extends_prefix, split_by_budget

POOLINGS = ("last", "mean", "last+mean")


@dataclass(frozen=True)
class FeatureResult:
    """One prompt's feature vector ([D], or [2D] for last+mean; float32 on the CPU), or why there is none."""

    vector: torch.Tensor | None
    prompt_tokens: int
    error: str | None = None


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    return pooling


def pool(normed: torch.Tensor, pooling: str) -> torch.Tensor:
    """normed [n, D] (one prompt's own rows, final norm applied) -> its feature vector."""
    if pooling == "last":
        return normed[-1]
    if pooling == "mean":
        return normed.mean(dim=0)
    return torch.cat((normed[-1], normed.mean(dim=0)))


class FeatureReader:
    """Feature vectors for one engine: prompts grouped by shared-prefix use, chunked by the token budget, each
    chunk one packed prefill. A prompt's vector depends on the prompt and the prefix split only."""

    def __init__(self, model: GemmaModel, max_batch_tokens: int, max_cached_prefixes: int) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.prefixes = PrefixStore(model.encode_prefix, max_cached_prefixes)

    def read(
        self, prompts: Sequence[tuple[int, list[int]]], pooling: str, shared_prefix: tuple[int, ...]
    ) -> dict[int, torch.Tensor]:
        """(index, ids) of prompts that fit -> index: feature vector."""
        check_pooling(pooling)
        groups: dict[bool, list[tuple[int, list[int]]]] = {True: [], False: []}
        for index, ids in prompts:
            groups[extends_prefix(ids, shared_prefix)].append((index, ids))
        vectors: dict[int, torch.Tensor] = {}
        for uses_prefix, members in groups.items():
            if not members:
                continue
            prefix = self.prefixes.get(shared_prefix) if uses_prefix else None
            skip = prefix.length if prefix is not None else 0
            for chunk in split_by_budget([len(ids) - skip for _, ids in members], self.max_batch_tokens):
                values = self._read_chunk([members[i][1][skip:] for i in chunk], prefix, pooling)
                vectors.update(zip([members[i][0] for i in chunk], values, strict=True))
        return vectors

    def _read_chunk(self, own: list[list[int]], prefix: PrefixKV | None, pooling: str) -> list[torch.Tensor]:
        """One packed prefill of prompts (their tokens after the prefix) -> their pooled final-norm states."""
        device = self.model.embed.weight.device
        skip = prefix.length if prefix is not None else 0
        segments, start = [], 0
        for ids in own:
            segments.append(Segment(start=start, length=len(ids), prefix=prefix))
            start += len(ids)
        tokens = torch.tensor([t for ids in own for t in ids], device=device)
        positions = torch.cat([torch.arange(skip, skip + len(ids)) for ids in own]).to(device)
        with torch.inference_mode():
            hidden = self.model.forward_packed(tokens, positions, segments)  # [T, D]
            normed = self.model.norm(hidden).float()
            return [pool(normed[s.start : s.start + s.length], pooling).cpu() for s in segments]
