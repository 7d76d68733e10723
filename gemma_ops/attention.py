"""Attention over packed sequences in a few batched calls per layer instead of a Python loop over sequences.

A packed row holds several sequences (prompts, scoring trees, continuations of shared prefixes) back to back.
``PackedPlan.build`` runs once per forward pass: it sorts the sequences by length into buckets, and for each
bucket builds gather indices that lay its queries and keys out as a right-padded batch [S, L] plus, where plain
causal attention is not exact (tree branches, a prefix, a sliding window shorter than a sequence), one boolean
mask for the whole bucket. Every layer of that type then runs one scaled_dot_product_attention per bucket, and
the KV-cache write of a prefill becomes one indexed copy per bucket.

Right padding needs no mask under causal attention: a real query never reaches a key after itself. Padded query
rows are computed and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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


PADDING_WASTE = 1.5  # a bucket's padded attention work may be at most this multiple of its real work


@dataclass(frozen=True)
class Bucket:
    """Sequences attended in one batched call: queries and keys gathered into right-padded [S, Lq] / [S, Lk]."""

    segments: tuple[int, ...]  # indices into the plan's segments
    q_index: torch.Tensor  # [S, Lq] rows of the packed row (padding: row 0)
    k_index: torch.Tensor  # [S, Lk] rows of the key source (prefix rows first; padding: row 0)
    out_rows: torch.Tensor  # [R] packed rows written back, in order of...
    out_take: torch.Tensor  # [R] ... these flat indices of the padded [S * Lq] output
    mask: torch.Tensor | None  # [S, 1, Lq, Lk] bool, None: plain causal is exact
    slots: torch.Tensor | None  # [S] KV-cache slots, None when nothing is cached
    key_length: tuple[int, ...]  # real keys per sequence (prefix + own)
    dense: bool = False  # the whole row in order, no padding, no prefix: views of q/k/v instead of gathers


@dataclass(frozen=True)
class PackedPlan:
    """Per layer window (None: global), the buckets of one packed forward pass, and the key-source layout."""

    buckets: dict[int | None, tuple[Bucket, ...]]
    prefixes: tuple[PrefixKV, ...]  # distinct prefixes, their keys first in the key source, in this order

    @staticmethod
    def build(positions: torch.Tensor, segments: Sequence[Segment], windows: Sequence[int | None]) -> PackedPlan:
        """positions [T] of the packed row; ``windows``: the distinct sliding windows of the model's layers."""
        device = positions.device
        prefixes: list[PrefixKV] = []
        prefix_start: dict[int, int] = {}
        offset = 0
        for seg in segments:
            if seg.prefix is not None and id(seg.prefix) not in prefix_start:
                prefix_start[id(seg.prefix)] = offset
                prefixes.append(seg.prefix)
                offset += seg.prefix.length
        host_positions = positions.tolist()
        builder = _Builder(host_positions, segments, prefix_start, offset, device)
        buckets = {window: builder.buckets(window) for window in dict.fromkeys(windows)}
        return PackedPlan(buckets, tuple(prefixes))

    def key_source(self, layer: int, own: torch.Tensor, values: bool) -> torch.Tensor:
        """[P_total + T, KVH, Dh]: the distinct prefixes' keys (or values) of one layer, then the packed row's."""
        if not self.prefixes:
            return own
        parts = [(p.values_at(layer) if values else p.keys_at(layer)).transpose(0, 1) for p in self.prefixes]
        return torch.cat((*parts, own), dim=0)


class _Builder:
    """Host-side index arithmetic for PackedPlan.build (one pass over the tokens, no per-layer work)."""

    def __init__(
        self,
        positions: list[int],
        segments: Sequence[Segment],
        prefix_start: dict[int, int],
        prefix_rows: int,
        device: torch.device,
    ) -> None:
        self.positions = positions
        self.segments = segments
        self.prefix_start = prefix_start
        self.prefix_rows = prefix_rows
        self.device = device
        self.lengths = [(seg.prefix.length if seg.prefix is not None else 0) + seg.length for seg in segments]

    def buckets(self, window: int | None) -> tuple[Bucket, ...]:
        order = sorted(range(len(self.segments)), key=lambda i: -self.lengths[i])
        groups: list[list[int]] = []
        real = 0
        for i in order:
            n_q, n_k = self.segments[i].length, self.lengths[i]
            if groups:
                group = groups[-1]
                first = self.segments[group[0]].length, self.lengths[group[0]]
                if (len(group) + 1) * first[0] * first[1] <= PADDING_WASTE * (real + n_q * n_k):
                    group.append(i)
                    real += n_q * n_k
                    continue
            groups.append([i])
            real = n_q * n_k
        return tuple(self._bucket(sorted(group), window) for group in groups)

    def _bucket(self, members: list[int], window: int | None) -> Bucket:
        segs = [self.segments[i] for i in members]
        lq = max(s.length for s in segs)
        lk = max(self.lengths[i] for i in members)
        q_index, k_index, out_rows, out_take = [], [], [], []
        q_pos, k_pos, q_branch, k_branch, q_parent = [], [], [], [], []
        needs_mask = False
        for row, seg in enumerate(segs):
            own = list(range(seg.start, seg.start + seg.length))
            pos = self.positions[seg.start : seg.start + seg.length]
            branch = seg.branch.tolist() if seg.branch is not None else [0] * seg.length
            parent = seg.parent.tolist() if seg.parent is not None else [0] * seg.length
            prefix_len = seg.prefix.length if seg.prefix is not None else 0
            first = self.prefix_start.get(id(seg.prefix), 0)
            keys = list(range(first, first + prefix_len)) + [self.prefix_rows + r for r in own]
            pad_q, pad_k = lq - seg.length, lk - len(keys)
            q_index.append(own + [0] * pad_q)
            k_index.append(keys + [0] * pad_k)
            out_rows.extend(own)
            out_take.extend(range(row * lq, row * lq + seg.length))
            q_pos.append(pos + [-1] * pad_q)
            k_pos.append(list(range(prefix_len)) + pos + [2**31 - 1] * pad_k)
            q_branch.append(branch + [0] * pad_q)
            k_branch.append([0] * prefix_len + branch + [0] * pad_k)
            q_parent.append(parent + [0] * pad_q)
            plain = seg.branch is None and seg.prefix is None and (window is None or seg.length <= window)
            needs_mask |= not plain
        mask = None
        if needs_mask:
            mask = self._mask(q_pos, k_pos, q_branch, k_branch, q_parent, window)
        slots = [s.slot for s in segs]
        dense = len(members) == len(self.segments) and all(
            s.start == row * lq and s.length == lq and s.prefix is None for row, s in enumerate(segs)
        )
        tensor = lambda values: torch.tensor(values, device=self.device)  # noqa: E731
        return Bucket(
            segments=tuple(members),
            q_index=tensor(q_index),
            k_index=tensor(k_index),
            out_rows=tensor(out_rows),
            out_take=tensor(out_take),
            mask=mask,
            slots=tensor(slots) if all(s is not None for s in slots) else None,
            key_length=tuple(self.lengths[i] for i in members),
            dense=dense,
        )

    def _mask(self, q_pos, k_pos, q_branch, k_branch, q_parent, window: int | None) -> torch.Tensor:
        """[S, 1, Lq, Lk]: causal, within the window, and the tree rule (a node sees the prompt, itself and its
        parent); a padded query row sees key 0 so that no row is empty."""
        qp, kp = torch.tensor(q_pos)[:, :, None], torch.tensor(k_pos)[:, None, :]
        qb, kb = torch.tensor(q_branch)[:, :, None], torch.tensor(k_branch)[:, None, :]
        parent = torch.tensor(q_parent)[:, :, None]
        allowed = (kp <= qp) & ((kb == 0) | (kb == qb) | (kb == parent))
        if window is not None:
            allowed &= qp - kp < window
        allowed[:, :, 0] |= qp[:, :, 0] < 0
        return allowed[:, None].to(self.device)
