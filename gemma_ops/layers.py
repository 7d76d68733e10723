"""The decoder's building blocks: RMSNorm, RoPE, attention over packed sequences or the KV cache, the GeGLU MLP,
and DecoderLayer, which owns one layer's whole residual step.

Segment and PrefixKV (how sequences are packed into one row) live in gemma_ops.attention with the plan that batches
their attention (model.py re-exports them for callers). The elementwise work between the matmuls (norms, QK-norm +
RoPE, GeGLU gating, residual adds) goes through the model's Kernels (gemma_ops.fused): eager or compiled.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from gemma_ops import fused
from gemma_ops.attention import PackedPlan
from gemma_ops.config import FULL, SLIDING, GemmaConfig
from gemma_ops.fused import Kernels
from gemma_ops.kv_cache import KVCache
from gemma_ops.native_attention import DecodeAttention


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by (1 + weight), cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.rms_norm(x, self.weight, self.eps)


CAUSAL_BLOCK_ROWS = 48  # plain causal prefill attention runs in query blocks of about this many rows
MAX_CAUSAL_BLOCKS = 8

RopeAt = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer type -> cos, signed sin [N, 1, Dh] for N positions


class Rope(nn.Module):
    """cos/sin tables per layer type, float32 like transformers, cast to the activation dtype when applied.

    The sin table has rotate_half's sign folded in (-sin on the first half), so a rotation is
    x * cos + swap_halves(x) * sin (gemma_ops.fused.qk_norm_rope). ``at`` gathers the rows of one forward pass
    once for all layers."""

    def __init__(self, config: GemmaConfig, max_positions: int, device: torch.device | str) -> None:
        super().__init__()
        dim = config.head_dim
        positions = torch.arange(max_positions, device=device, dtype=torch.float32)
        self.tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer_type in (FULL, SLIDING):
            rope = config.rope[layer_type]
            inv_freq = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
            inv_freq = inv_freq / rope.linear_factor
            freqs = positions[:, None] * inv_freq[None, :]  # [P, dim/2]
            sin = freqs.sin()
            self.tables[layer_type] = (torch.cat((freqs, freqs), -1).cos(), torch.cat((-sin, sin), -1))

    def at(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeAt:
        """positions [N] -> per layer type the cos and signed sin rows [N, 1, Dh] in ``dtype``."""
        return {
            layer_type: (cos[positions].to(dtype)[:, None, :], sin[positions].to(dtype)[:, None, :])
            for layer_type, (cos, sin) in self.tables.items()
        }


class Attention(nn.Module):
    """Multi-, grouped- or single-query attention with fused q/k/v, optional QK-norm, soft-capping and window."""

    def __init__(self, config: GemmaConfig, layer: int) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.layer = layer
        self.layer_type = config.layer_types[layer]
        self.window = config.sliding_window if self.layer_type == SLIDING else None
        self.scaling = config.scaling
        self.softcap = config.attn_logit_softcapping
        self.eps = config.rms_norm_eps
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=False)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.kernels = Kernels.eager()  # GemmaModel.use_kernels sets the model's
        self.decode_attention: DecodeAttention | None = None  # GemmaModel.speed_up sets the native kernel

    def _project(self, x: torch.Tensor, rope: RopeAt) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> q [N, H, Dh], k [N, KVH, Dh], v [N, KVH, Dh] with QK-norm and RoPE applied."""
        qkv = self.qkv_proj(x)  # [N, (H + 2 KVH) Dh]
        q_weight = self.q_norm.weight if self.q_norm is not None else None
        k_weight = self.k_norm.weight if self.k_norm is not None else None
        cos, sin = rope[self.layer_type]
        return self.kernels.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, self.heads, self.kv_heads, self.eps)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        """q [B, KVH, G*Q, Dh] or [B, H, Q, Dh]; k, v [B, KVH, K, Dh]; mask broadcastable to [B, *, Q, K]."""
        if self.softcap is None and causal and q.device.type == "cpu":
            return self._attend_grouped(q, k, v, mask)
        if self.softcap is None:
            gqa = q.shape[1] != k.shape[1]
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=self.scaling, enable_gqa=gqa
            )
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if causal and mask is None:
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)

    def _attend_grouped(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Causal attention of a packed bucket on CPU as batched matmuls: q [S, H, L, Dh], k, v [S, KVH, K, Dh],
        mask [S, 1, L, K] or None (plain causal, L == K) -> [S, H, L, Dh].

        Plain causal attention runs in blocks of queries, each against the keys up to its own last position
        only, instead of computing the whole [L, K] square and masking half of it away: about 5/8 of the work at
        4 blocks, with the same scores (a block's row is the square's row, cut where the mask starts)."""
        if mask is not None:
            return self._grouped_matmuls(q, k, v, mask[:, :, None])
        length = q.shape[2]
        blocks = min(MAX_CAUSAL_BLOCKS, -(-length // CAUSAL_BLOCK_ROWS))
        bounds = [length * i // blocks for i in range(blocks + 1)]
        outs = []
        for start, end in itertools.pairwise(bounds):  # queries start..end-1 see keys 0..end-1
            allowed = torch.ones(end - start, end, dtype=torch.bool, device=q.device).tril(start)
            outs.append(self._grouped_matmuls(q[:, :, start:end], k[:, :, :end], v[:, :, :end], allowed))
        if len(outs) == 1:
            return outs[0]
        return torch.cat(outs, dim=2)

    def _grouped_matmuls(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """q [S, H, L, Dh]; k, v [S, KVH, K, Dh]; ``allowed`` broadcastable to [S, KVH, G, L, K] -> [S, H, L, Dh].

        The G query heads sharing a KV head are one [G * L, Dh] matrix against that head's keys (two matmuls
        instead of the CPU flash kernel of scaled_dot_product_attention, which took twice as long on the
        llama.cpp benchmark shape: op_profile --llama-shape). Scores are rounded to the activation dtype as
        transformers' eager attention rounds them; the softmax runs in float32."""
        batch, heads, length, dim = q.shape
        kv_heads, keys = k.shape[1], k.shape[2]
        groups = heads // kv_heads  # head h uses kv head h // groups
        scores = torch.matmul(q.reshape(batch, kv_heads, groups * length, dim), k.transpose(-1, -2))
        scores = scores.view(batch, kv_heads, groups, length, keys).float() * self.scaling  # [S, KVH, G, L, K]
        probs = torch.softmax(scores.masked_fill_(~allowed, float("-inf")), dim=-1).to(q.dtype)
        out = torch.matmul(probs.view(batch, kv_heads, groups * length, keys), v)  # [S, KVH, G * L, Dh]
        return out.view(batch, heads, length, dim)

    def forward_packed(
        self,
        x: torch.Tensor,
        plan: PackedPlan,
        rope: RopeAt,
        cache: KVCache | None,
        capture: list[tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> torch.Tensor:
        """x [T, D] -> [T, D]: one attention call per bucket of the plan (see gemma_ops.attention).
        ``capture`` collects this layer's k, v [KVH, T, Dh] (a single-sequence pass)."""
        q, k, v = self._project(x, rope)
        if capture is not None:
            capture.append((k.transpose(0, 1), v.transpose(0, 1)))
        k_src, v_src = plan.key_source(self.layer, k, values=False), plan.key_source(self.layer, v, values=True)
        out = torch.empty_like(q)  # [T, H, Dh]
        for bucket in plan.buckets[self.window]:
            if bucket.dense:  # [S * L] rows in order: reshape instead of gather
                bq, bk, bv = (t.unflatten(0, bucket.q_index.shape).transpose(1, 2) for t in (q, k, v))
            else:
                bq = q[bucket.q_index].transpose(1, 2)  # [S, H, Lq, Dh]
                bk = k_src[bucket.k_index].transpose(1, 2)  # [S, KVH, Lk, Dh]
                bv = v_src[bucket.k_index].transpose(1, 2)
            if cache is not None and bucket.slots is not None:  # positions 0 .. prefix + n - 1
                cache.write_packed(self.layer, bucket.slots, bk, bv, bucket.key_length)
            attended = self._attend(bq, bk, bv, bucket.mask, causal=True)  # [S, H, Lq, Dh]
            if bucket.dense:
                return self.o_proj(attended.transpose(1, 2).reshape(x.shape[0], -1))
            out[bucket.out_rows] = attended.transpose(1, 2).flatten(0, 1)[bucket.out_take]
        return self.o_proj(out.view(x.shape[0], -1))

    def forward_step(
        self, x: torch.Tensor, positions: torch.Tensor, rope: RopeAt, cache: KVCache, valid: torch.Tensor
    ) -> torch.Tensor:
        """x [B, D] for running slots 0..B-1 at positions [B]; ``valid`` [B, 1, 1, length] marks the cache
        entries each slot may attend to (length = max(positions) + 1; a ring layer reads its first entries)."""
        batch = x.shape[0]
        q, k, v = self._project(x, rope)
        cache.write_step(self.layer, k, v, positions)
        keys, values = cache.view(self.layer, batch, valid.shape[-1])  # [B, KVH, L, Dh]
        if self.decode_attention is not None and DecodeAttention.supports(q, keys, values):  # keys 0..positions[b]
            attended = self.decode_attention.attend(q, keys, values, positions, self.scaling, self.softcap)
            return self.o_proj(attended.reshape(batch, -1))  # [B, H, Dh] -> [B, D]
        groups = self.heads // self.kv_heads
        q = q.reshape(batch, self.kv_heads, groups, self.head_dim)  # head h uses kv head h // groups
        attended = self._attend(q, keys, values, valid[..., : keys.shape[2]], causal=False)  # [B, KVH, G, Dh]
        return self.o_proj(attended.reshape(batch, -1))


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.kernels = Kernels.eager()  # GemmaModel.use_kernels sets the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.kernels.gelu_mul(self.gate_up_proj(x)))  # [N, 2F] -> [N, F] -> [N, D]


class DecoderLayer(nn.Module):
    """One decoder layer: pre-norm attention and MLP, each added to the residual stream."""

    def __init__(self, config: GemmaConfig, layer: int) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_norm = RMSNorm(config.hidden_size, eps)
        self.pre_mlp_norm = RMSNorm(config.hidden_size, eps)
        # Gemma 2/3 "sandwich" norms on the outputs of attention and the MLP.
        self.post_attn_norm = RMSNorm(config.hidden_size, eps) if config.sandwich_norms else None
        self.post_mlp_norm = RMSNorm(config.hidden_size, eps) if config.sandwich_norms else None
        self.eps = eps
        self.kernels = Kernels.eager()  # GemmaModel.use_kernels sets the model's

    def use_kernels(self, kernels: Kernels) -> None:
        self.kernels = self.attn.kernels = self.mlp.kernels = kernels

    def forward_packed(
        self,
        h: torch.Tensor,
        plan: PackedPlan,
        rope: RopeAt,
        cache: KVCache | None,
        capture: list[tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> torch.Tensor:
        """Residual stream h [T, D] of packed sequences -> [T, D] after this layer (see Attention.forward_packed)."""
        x = self.kernels.rms_norm(h, self.input_norm.weight, self.eps)
        attn_out = self.attn.forward_packed(x, plan, rope, cache, capture)
        return self._add_mlp(h, attn_out)

    def forward_step(
        self, h: torch.Tensor, positions: torch.Tensor, rope: RopeAt, cache: KVCache, valid: torch.Tensor
    ) -> torch.Tensor:
        """Residual stream h [B, D] of one new token per running slot -> [B, D] after this layer."""
        x = self.kernels.rms_norm(h, self.input_norm.weight, self.eps)
        attn_out = self.attn.forward_step(x, positions, rope, cache, valid)
        return self._add_mlp(h, attn_out)

    def _add_mlp(self, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """h, attn_out [N, D] -> h + attention, then + the MLP of that (sandwich norms where the model has them)."""
        post_attn, post_mlp = (n.weight if n is not None else None for n in (self.post_attn_norm, self.post_mlp_norm))
        h, x = self.kernels.add_norm(h, attn_out, post_attn, self.pre_mlp_norm.weight, self.eps)
        return self.kernels.add_norm(h, self.mlp(x), post_mlp, None, self.eps)[0]
