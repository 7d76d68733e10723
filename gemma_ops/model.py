"""The Gemma decoder (Gemma 1, 2 and 3 text) as a plain nn.Module.

Two forward paths share the layers (gemma_ops.layers):
- ``forward_packed``: several sequences' tokens concatenated into one [T] row (no padding); linear layers run on
  all T tokens at once and attention in a few padded batches of sequences (gemma_ops.attention). Used for prompt
  prefill (writing the KV cache) and for scoring, where candidate continuations branch off a shared prompt (a tree
  mask, no cache).
- ``forward_step``: one new token for each running slot, attending to the KV cache.
Both return hidden states before the final norm; ``logits`` turns chosen rows into logits, optionally for
chosen vocabulary rows only (the output layer is the largest matmul of small Gemmas).

For speed on CPU the engine may ``prepack`` the linear weights for oneDNN (gemma_ops.prepack), hand the layers
compiled elementwise kernels (``use_kernels``, gemma_ops.fused) and run the decode step's attention in a C kernel
(``use_decode_attention``, gemma_ops.native_attention); the results stay as they were up to bfloat16 rounding.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from gemma_ops.attention import PackedPlan, PrefixKV, Segment
from gemma_ops.config import GemmaConfig
from gemma_ops.fused import Kernels, WarmUpShapes
from gemma_ops.kv_cache import KVCache
from gemma_ops.layers import DecoderLayer, RMSNorm, Rope
from gemma_ops.native_attention import DecodeAttention, load_decode_attention
from gemma_ops.prepack import can_prepack, pack_weight, packed_linear, prepack_linears

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
        self.rope: Rope | None = None  # init_rope sets it and the embedding scale
        self.kernels = Kernels.eager()
        self._packed_output: torch.Tensor | None = None  # [V, D] in oneDNN's layout (prepack)

    def init_rope(self, max_positions: int) -> None:
        """Build the RoPE tables and the embedding scale (not weights, so not in the checkpoint) on the model's
        device, once: a forward pass then makes no tensor from host data (a CUDA graph captures it as it is)."""
        weight = self.embed.weight
        self.rope = Rope(self.config, max_positions, weight.device)
        self._embed_scale = torch.tensor(self.config.hidden_size**0.5, dtype=weight.dtype, device=weight.device)

    def speed_up(self, prepack: bool | None, compile_kernels: bool | None, rows_hint: int) -> float:
        """Prepack the weights and compile the kernels (the elementwise work by torch.compile, the decode
        attention of a bfloat16 model on the CPU by the C compiler) as asked (None: where oneDNN runs bfloat16
        natively and the model is bfloat16 on the CPU); returns the seconds spent compiling."""
        weight = self.embed.weight
        fast_cpu = can_prepack(weight.device, weight.dtype)
        if prepack if prepack is not None else fast_cpu:
            self.prepack(rows_hint)
        compile_kernels = compile_kernels if compile_kernels is not None else fast_cpu
        start = time.perf_counter()
        if compile_kernels and weight.device.type == "cpu" and weight.dtype == torch.bfloat16:
            self.use_decode_attention(load_decode_attention())
        return time.perf_counter() - start + self.use_kernels(Kernels(compile_kernels))

    def use_decode_attention(self, kernel: DecodeAttention | None) -> None:
        """Run the decode step's attention through ``kernel`` (gemma_ops.native_attention); None: PyTorch's."""
        for layer in self.layers:
            layer.attn.decode_attention = kernel

    def use_kernels(self, kernels: Kernels) -> float:
        """Run the layers' elementwise work through ``kernels``; returns the seconds spent compiling them."""
        self.kernels = kernels
        for layer in self.layers:
            layer.use_kernels(kernels)
        c = self.config
        shapes = WarmUpShapes(c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim,
                              c.rms_norm_eps, c.qk_norm, c.sandwich_norms, c.vocab_size)  # fmt: skip
        return kernels.warm_up(shapes, self.embed.weight.device, self.embed.weight.dtype)

    def prepack(self, rows_hint: int) -> None:
        """Lay the decoder's linear weights and the output layer out for oneDNN once (gemma_ops.prepack); the
        layers' plain weights are replaced, the output layer's kept (the embedding and scoring rows read it)."""
        prepack_linears(self.layers, rows_hint)
        self._packed_output = pack_weight(self.output_weight, rows_hint)

    @property
    def output_weight(self) -> torch.Tensor:
        """[V, D]: the output layer (the embedding when tied)."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens) * self._embed_scale  # sqrt(D), rounded to the weights' dtype as HF rounds it

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
        normed = self.kernels.rms_norm(hidden, self.norm.weight, self.config.rms_norm_eps)
        if vocab_rows is None and self._packed_output is not None:
            logits = packed_linear(normed, self._packed_output)
        else:
            weight = self.output_weight if vocab_rows is None else self.output_weight[vocab_rows]
            logits = F.linear(normed, weight)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
