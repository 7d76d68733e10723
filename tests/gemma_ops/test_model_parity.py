"""Our decoder's logits equal transformers' own Gemma, Gemma2 and Gemma3 on tiny random checkpoints (float32)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from gemma_ops.model import Segment
from gemma_ops.weights import load_model
from tests.tiny_models import FAMILIES, WINDOW


def _hf_logits(path, family: str, ids: list[int]) -> torch.Tensor:
    kwargs = {"attn_implementation": "eager"} if family == "gemma2" else {}
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def _our_logits(model, sequences: list[list[int]]) -> list[torch.Tensor]:
    tokens = torch.tensor([t for seq in sequences for t in seq])
    positions = torch.cat([torch.arange(len(seq)) for seq in sequences])
    segments, start = [], 0
    for seq in sequences:
        segments.append(Segment(start=start, length=len(seq)))
        start += len(seq)
    logits = model.logits(model.forward_packed(tokens, positions, segments))
    return list(torch.split(logits, [len(s) for s in sequences]))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_beyond_the_sliding_window(tiny_checkpoints, family):
    path = tiny_checkpoints[family]
    generator = torch.Generator().manual_seed(7)
    long_ids = [2, *torch.randint(10, 5000, (3 * WINDOW,), generator=generator).tolist()]  # 25 > window
    short_ids = [2, *torch.randint(10, 5000, (5,), generator=generator).tolist()]
    model = load_model(path, "cpu", torch.float32)
    model.init_rope(64)
    ours_long, ours_short = _our_logits(model, [long_ids, short_ids])  # packed together
    torch.testing.assert_close(ours_long, _hf_logits(path, family, long_ids), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(ours_short, _hf_logits(path, family, short_ids), atol=2e-4, rtol=1e-4)
    # The check is not vacuous: the logits differ clearly between positions.
    assert (ours_long[-1] - ours_long[-2]).abs().max() > 1e-2
