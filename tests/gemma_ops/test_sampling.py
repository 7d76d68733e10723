"""Batched sampling and the content seed, without a model."""

from __future__ import annotations

import torch

from gemma_ops.sampling import SamplingParams, content_seed, make_generator, sample_batch, sample_one


def test_sample_batch_mixes_greedy_and_seeded_rows():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 1.9, 1.8], [0.5, 0.1, 4.0]])
    sampled = SamplingParams(temperature=1.0, seed=5)
    params = [SamplingParams(), sampled, SamplingParams(temperature=2.0, top_k=1)]
    tokens = sample_batch(logits, params, [make_generator(p, fallback_seed=0) for p in params])
    alone = sample_one(logits[1], sampled, make_generator(sampled, fallback_seed=0))
    assert tokens == [1, alone, 2]  # greedy rows and top-1 rows take the argmax


def test_content_seed_depends_on_the_prompt_only():
    assert content_seed([2, 5, 9]) == content_seed((2, 5, 9))
    assert content_seed([2, 5, 9]) != content_seed([2, 9, 5])
