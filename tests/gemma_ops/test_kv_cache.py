"""KVCache writes: a packed prefill's prompts land in their slots, ring layers keeping each prompt's last window."""

from __future__ import annotations

import torch

from gemma_ops.config import SLIDING
from gemma_ops.kv_cache import KVCache
from gemma_ops.weights import load_model
from tests.tiny_models import WINDOW


def test_packed_prompts_past_the_window_keep_their_last_window_in_ring_order(tiny_checkpoints):
    config = load_model(tiny_checkpoints["gemma3"], "cpu", torch.float32).config
    cache = KVCache(config, max_slots=4, max_context=64, device="cpu", dtype=torch.float32)
    ring = config.layer_types.index(SLIDING)
    assert cache.capacity(ring) == WINDOW == 8
    lengths = (20, 3, 8, 11)  # past the window, short, exactly the window, past it with a ring wrap at 3
    slots = torch.tensor([2, 0, 3, 1])
    heads, dim = config.num_kv_heads, config.head_dim
    # k[i, h, p, d] = 1000 i + 100 h + p + d / 100: every entry says where it came from
    k = (
        1000 * torch.arange(4.0)[:, None, None, None]
        + 100 * torch.arange(float(heads))[None, :, None, None]
        + torch.arange(20.0)[None, None, :, None]
        + torch.arange(float(dim))[None, None, None, :] / 100
    )
    cache.write_packed(ring, slots, k, -k, lengths)
    for i, n in enumerate(lengths):
        slot = int(slots[i])
        for p in range(max(n - WINDOW, 0), n):  # the kept positions, at p % window
            torch.testing.assert_close(cache.keys[ring][slot, :, p % WINDOW], k[i, :, p])
            torch.testing.assert_close(cache.values[ring][slot, :, p % WINDOW], -k[i, :, p])
    assert cache.keys[ring][0, :, 3:].abs().sum() == 0  # slot 0's prompt has 3 positions: the rest untouched
    assert cache.keys[ring][1, 0, :, 0].tolist() == [3008.0, 3009.0, 3010.0, 3003.0, 3004.0, 3005.0, 3006.0, 3007.0]
