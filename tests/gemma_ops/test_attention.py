"""PackedPlan: sequences bucketed by length, every row attended once, masks that follow the packing rules."""

from __future__ import annotations

import torch

from gemma_ops.attention import PackedPlan, PrefixKV, Segment
from gemma_ops.kv_cache import KVCache
from gemma_ops.weights import load_model
from tests.tiny_models import WINDOW


def _segments(lengths: list[int]) -> tuple[torch.Tensor, list[Segment]]:
    segments, start = [], 0
    for n in lengths:
        segments.append(Segment(start, n))
        start += n
    return torch.cat([torch.arange(n) for n in lengths]), segments


def test_buckets_group_similar_lengths_and_cover_every_row_once():
    positions, segments = _segments([100, 10, 96, 12, 11])
    plan = PackedPlan.build(positions, segments, [None])
    buckets = plan.buckets[None]
    assert sorted(sorted(b.segments) for b in buckets) == [[0, 2], [1, 3, 4]]  # long ones apart from short ones
    rows = torch.cat([b.out_rows for b in buckets])
    assert sorted(rows.tolist()) == list(range(229))
    long = next(b for b in buckets if 0 in b.segments)
    assert long.q_index.shape == (2, 100) and long.mask is None  # plain prompts: causal with right padding
    assert long.q_index[1, :96].tolist() == list(range(110, 206))  # the 96-token prompt starts at row 110


def test_window_and_tree_masks():
    positions, segments = _segments([6, 3])
    plan = PackedPlan.build(positions, segments, [None, 4])
    assert all(b.mask is None for b in plan.buckets[None])
    (windowed,) = [b for b in plan.buckets[4] if 0 in b.segments]
    mask = windowed.mask[0, 0]  # [6, 6] for the 6-token prompt
    assert mask[5].tolist() == [False, False, True, True, True, True]  # position 5 sees 2..5 (window 4)
    # a prompt (2 tokens) with two branches of two tokens each: a branch sees the prompt and itself only
    tree = Segment(0, 6, branch=torch.tensor([0, 0, 1, 1, 2, 2]))
    (bucket,) = PackedPlan.build(torch.tensor([0, 1, 2, 3, 2, 3]), [tree], [None]).buckets[None]
    assert bucket.mask[0, 0, 5].tolist() == [True, True, False, False, True, True]
    assert bucket.mask[0, 0, 3].tolist() == [True, True, True, True, False, False]


def test_padded_query_rows_are_never_empty():
    prefix = PrefixKV((5, 6, 7), keys=(), values=())
    segments = [Segment(0, 4, prefix=prefix), Segment(4, 2, prefix=prefix)]
    plan = PackedPlan.build(torch.tensor([3, 4, 5, 6, 3, 4]), segments, [None])
    (bucket,) = plan.buckets[None]
    assert bucket.mask.shape == (2, 1, 4, 7)
    assert bucket.mask.any(-1).all()  # rows 2 and 3 of the short sequence are padding: they see key 0
    assert bucket.mask[1, 0, 1].tolist() == [True, True, True, True, True, False, False]  # prefix + own two
    assert bucket.k_index[1, :5].tolist() == [0, 1, 2, 7, 8]  # the prefix's rows, then its own after them


def test_packed_prefill_writes_the_cache_like_one_prompt_at_a_time(tiny_checkpoints):
    """Prompts of mixed lengths (one past the sliding window) prefilled together fill each slot as alone."""
    model = load_model(tiny_checkpoints["gemma3"], "cpu", torch.float32)
    model.init_rope(64)
    generator = torch.Generator().manual_seed(3)
    lengths = [3 * WINDOW, 4, WINDOW - 1, 5]
    prompts = [torch.randint(10, 5000, (n,), generator=generator) for n in lengths]
    together = KVCache(model.config, len(prompts), 64, "cpu", torch.float32)
    positions, segments = _segments(lengths)
    segments = [Segment(s.start, s.length, slot=i) for i, s in enumerate(segments)]
    hidden = model.forward_packed(torch.cat(prompts), positions, segments, together)
    alone = KVCache(model.config, len(prompts), 64, "cpu", torch.float32)
    for slot, ids in enumerate(prompts):
        own = model.forward_packed(ids, torch.arange(len(ids)), [Segment(0, len(ids), slot=slot)], alone)
        rows = slice(segments[slot].start, segments[slot].start + len(ids))
        torch.testing.assert_close(hidden[rows], own, atol=1e-5, rtol=1e-5)
    for layer in range(model.config.num_layers):
        for slot, n in enumerate(lengths):
            kept = min(n, together.capacity(layer))  # past its end a slot holds padding, rewritten by decode
            torch.testing.assert_close(together.keys[layer][slot, :, :kept], alone.keys[layer][slot, :, :kept])
            torch.testing.assert_close(together.values[layer][slot, :, :kept], alone.values[layer][slot, :, :kept])
