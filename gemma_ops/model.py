"""The Gemma decoder (Gemma 1, 2 and 3 text) as a plain nn.Module.

Two forward paths share the layers (gemma_ops.layers):
- ``forward_packed``: several sequences' tokens concatenated into one [T] row (no padding); linear layers run on
  all T tokens at once and attention in a few padded batches of sequences (gemma_ops.attention). Used for prompt
  prefill (writing the KV cache) and for scoring, where candidate continuations branch off a shared prompt (a tree
  mask, no cache).
- ``forward_step``: one new token for each running slot, attending to the KV cache.
Both return hidden states before the final norm; ``logits`` turns chosen rows into logits, optionally for
chosen vocabulary rows only (the output layer is the largest matmul of small Gemmas).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemma_ops.attention import PackedPlan, PrefixKV, Segment
from gemma_ops.config import GemmaConfig
from gemma_ops.kv_cache import KVCache
from gemma_ops.layers import DecoderLayer, RMSNorm, Rope

__all__ = ["GemmaModel", "PrefixKV", "Segment"]


class GemmaModel(nn.Module):
    """Embedding, the decoder layers, the final norm and the output layer; the engine chooses which path runs."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.rope: Rope | None = None

    def init_rope(self, max_positions: int) -> None:
        """Build the RoPE tables (not weights, so not in the checkpoint) on the model's device."""
        self.rope = Rope(self.config, max_positions, self.embed.weight.device)

    @property
    def output_weight(self) -> torch.Tensor:
        """[V, D]: the output layer (the embedding when tied)."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        return x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype, device=x.device)

    @torch.inference_mode()
    def forward_packed(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        segments: list[Segment],
        cache: KVCache | None = None,
        capture: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """tokens, positions [T] (sequences packed back to back) -> hidden states [T, D] before the final norm."""
        h = self._embed(tokens)  # [T, D]
        plan = PackedPlan.build(positions, segments, [layer.attn.window for layer in self.layers])
        rope = self.rope.at(positions, h.dtype)
        for layer in self.layers:
            h = layer.forward_packed(h, plan, rope, cache, capture)
        return h

    @torch.inference_mode()
    def encode_prefix(self, tokens: list[int]) -> PrefixKV:
        """Keys and values of every layer for a shared prefix, computed once for many sequences."""
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        device = self.embed.weight.device
        n = len(tokens)
        self.forward_packed(
            torch.tensor(tokens, device=device), torch.arange(n, device=device), [Segment(0, n)], capture=captured
        )
        return PrefixKV(tuple(tokens), tuple(k.clone() for k, _ in captured), tuple(v.clone() for _, v in captured))

    @torch.inference_mode()
    def forward_step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, length: int) -> torch.Tensor:
        """One token for each running slot 0..B-1: tokens, positions [B] -> hidden states [B, D].

        ``length`` = max(positions) + 1, passed from the host so the step needs no device sync."""
        h = self._embed(tokens)  # [B, D]
        rope = self.rope.at(positions, h.dtype)
        valid = (torch.arange(length, device=h.device)[None, :] <= positions[:, None])[:, None, None, :]
        for layer in self.layers:
            h = layer.forward_step(h, positions, rope, cache, valid)  # valid [B, 1, 1, length]
        return h

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, vocab_rows: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [N, D] -> logits [N, V], or [N, len(vocab_rows)] for those output rows only."""
        weight = self.output_weight if vocab_rows is None else self.output_weight[vocab_rows]
        logits = F.linear(self.norm(hidden), weight)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
