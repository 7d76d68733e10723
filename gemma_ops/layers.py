"""The decoder's building blocks: RMSNorm, RoPE, attention over packed sequences or the KV cache, the GeGLU MLP,
and DecoderLayer, which owns one layer's whole residual step.

Segment and PrefixKV describe how sequences are packed into one row; they live here because attention consumes them
(model.py re-exports them for callers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gemma_ops.config import FULL, SLIDING, GemmaConfig
from gemma_ops.kv_cache import KVCache


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by (1 + weight), cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)


@dataclass(frozen=True)
class PrefixKV:
    """Keys/values of a token prefix shared by several sequences, per layer: [kv_heads, P, head_dim] each.

    A prefix may extend a ``parent`` (a record's trunk extends the template head that every record shares): it
    then holds only its own positions' keys and values, and ``tokens`` spells the whole prefix, parent included.
    """

    tokens: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    parent: PrefixKV | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)

    def keys_at(self, layer: int) -> torch.Tensor:
        """[kv_heads, P, head_dim]: the whole prefix's keys for one layer, the parent's first."""
        own = self.keys[layer]
        return own if self.parent is None else torch.cat((self.parent.keys_at(layer), own), dim=1)

    def values_at(self, layer: int) -> torch.Tensor:
        own = self.values[layer]
        return own if self.parent is None else torch.cat((self.parent.values_at(layer), own), dim=1)


@dataclass(frozen=True)
class Segment:
    """One sequence inside a packed batch.

    start/length locate its tokens in the packed row. ``branch`` (None for a plain prompt) gives, per token, 0 for
    the shared prompt and k > 0 for the k-th branch; a branch token sees the prompt, its own branch and, given
    ``parent``, its branch's parent (a candidate sees the question it answers). ``slot`` is the KV-cache slot its
    keys/values are written to (None: nothing is cached).
    ``prefix``: the sequence continues a shared prefix (its positions start at prefix.length) whose keys and
    values were computed once; a cached segment's slot then holds the prefix's keys and values too.
    """

    start: int
    length: int
    slot: int | None = None
    branch: torch.Tensor | None = None  # [length] int
    prefix: PrefixKV | None = None
    parent: torch.Tensor | None = None  # [length] int: the parent node of each token's branch (None: all 0)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rope(nn.Module):
    """cos/sin tables per layer type, float32 like transformers, cast to the activation dtype when applied."""

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
            emb = torch.cat((freqs, freqs), dim=-1)  # [P, dim]
            self.tables[layer_type] = (emb.cos(), emb.sin())

    def apply(self, x: torch.Tensor, positions: torch.Tensor, layer_type: str) -> torch.Tensor:
        """x [N, heads, dim] rotated by positions [N]."""
        cos_table, sin_table = self.tables[layer_type]
        cos = cos_table[positions].to(x.dtype)[:, None, :]
        sin = sin_table[positions].to(x.dtype)[:, None, :]
        return x * cos + rotate_half(x) * sin


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
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=False)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def _project(
        self, x: torch.Tensor, positions: torch.Tensor, rope: Rope
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> q [N, H, Dh], k [N, KVH, Dh], v [N, KVH, Dh] with QK-norm and RoPE applied."""
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(n, self.heads, self.head_dim)
        k = k.view(n, self.kv_heads, self.head_dim)
        v = v.view(n, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return rope.apply(q, positions, self.layer_type), rope.apply(k, positions, self.layer_type), v

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        """q [B, KVH, G*Q, Dh] or [B, H, Q, Dh]; k, v [B, KVH, K, Dh]; mask broadcastable to [B, *, Q, K]."""
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

    def _segment_mask(
        self,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        q_branch: torch.Tensor | None,
        k_branch: torch.Tensor | None,
        q_parent: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Boolean [n_q, n_k] mask for one packed sequence, or None when plain causal attention is exact."""
        plain = q_branch is None and q_pos.shape[0] == k_pos.shape[0]
        if plain and (self.window is None or k_pos.shape[0] <= self.window):
            return None
        allowed = k_pos[None, :] <= q_pos[:, None]
        if q_branch is not None:
            visible = (k_branch[None, :] == 0) | (k_branch[None, :] == q_branch[:, None])
            if q_parent is not None:
                visible |= k_branch[None, :] == q_parent[:, None]
            allowed &= visible
        if self.window is not None:
            allowed &= q_pos[:, None] - k_pos[None, :] < self.window
        return allowed

    def forward_packed(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        segments: list[Segment],
        rope: Rope,
        cache: KVCache | None,
        capture: list[tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> torch.Tensor:
        """x [T, D] -> [T, D]. ``capture`` collects this layer's k, v [KVH, T, Dh] (a single-sequence pass)."""
        q, k, v = self._project(x, positions, rope)
        if capture is not None:
            capture.append((k.transpose(0, 1), v.transpose(0, 1)))
        out = torch.empty_like(q)  # [T, H, Dh]
        for seg in segments:
            rows = slice(seg.start, seg.start + seg.length)
            seg_k, seg_v = k[rows].transpose(0, 1), v[rows].transpose(0, 1)  # [KVH, n, Dh]
            q_pos = k_pos = positions[rows]
            q_branch = k_branch = seg.branch
            if seg.prefix is not None:
                prefix = seg.prefix
                seg_k = torch.cat((prefix.keys_at(self.layer), seg_k), dim=1)
                seg_v = torch.cat((prefix.values_at(self.layer), seg_v), dim=1)
                k_pos = torch.cat((torch.arange(prefix.length, device=x.device), q_pos))
                if q_branch is None:
                    q_branch = torch.zeros_like(q_pos)
                k_branch = torch.cat((torch.zeros(prefix.length, dtype=q_branch.dtype, device=x.device), q_branch))
            if cache is not None and seg.slot is not None:  # positions 0 .. prefix + n - 1
                cache.write_prompt(self.layer, seg.slot, seg_k, seg_v)
            mask = self._segment_mask(q_pos, k_pos, q_branch, k_branch, seg.parent)
            seg_q = q[rows].transpose(0, 1).unsqueeze(0)  # [1, H, n, Dh]
            attended = self._attend(seg_q, seg_k.unsqueeze(0), seg_v.unsqueeze(0), mask, causal=True)
            out[rows] = attended[0].transpose(0, 1)
        return self.o_proj(out.reshape(x.shape[0], -1))

    def forward_step(
        self, x: torch.Tensor, positions: torch.Tensor, rope: Rope, cache: KVCache, length: int
    ) -> torch.Tensor:
        """x [B, D] for running slots 0..B-1 at positions [B]; ``length`` = max(positions) + 1."""
        batch = x.shape[0]
        q, k, v = self._project(x, positions, rope)
        cache.write_step(self.layer, k, v, positions)
        keys, values = cache.view(self.layer, batch, length)  # [B, KVH, L, Dh]
        valid = torch.arange(keys.shape[2], device=x.device)[None, :] <= positions[:, None]  # [B, L]
        groups = self.heads // self.kv_heads
        q = q.view(batch, self.kv_heads, groups, self.head_dim)  # head h uses kv head h // groups
        attended = self._attend(q, keys, values, valid[:, None, None, :], causal=False)  # [B, KVH, G, Dh]
        return self.o_proj(attended.reshape(batch, -1))


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


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

    def forward_packed(
        self,
        h: torch.Tensor,
        positions: torch.Tensor,
        segments: list[Segment],
        rope: Rope,
        cache: KVCache | None,
        capture: list[tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> torch.Tensor:
        """Residual stream h [T, D] of packed sequences -> [T, D] after this layer (see Attention.forward_packed)."""
        attn_out = self.attn.forward_packed(self.input_norm(h), positions, segments, rope, cache, capture)
        return self._add_mlp(h, attn_out)

    def forward_step(
        self, h: torch.Tensor, positions: torch.Tensor, rope: Rope, cache: KVCache, length: int
    ) -> torch.Tensor:
        """Residual stream h [B, D] of one new token per running slot -> [B, D] after this layer."""
        attn_out = self.attn.forward_step(self.input_norm(h), positions, rope, cache, length)
        return self._add_mlp(h, attn_out)

    def _add_mlp(self, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """h, attn_out [N, D] -> h + attention, then + the MLP of that (sandwich norms where the model has them)."""
        if self.post_attn_norm is not None:
            attn_out = self.post_attn_norm(attn_out)
        h = h + attn_out
        out = self.mlp(self.pre_mlp_norm(h))
        if self.post_mlp_norm is not None:
            out = self.post_mlp_norm(out)
        return h + out
