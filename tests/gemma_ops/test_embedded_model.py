"""The embedded Gemma 3 270M: greedy output equals transformers' greedy `generate`."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gemma_ops import GemmaEngine, SamplingParams

pytestmark = pytest.mark.embedded

PROMPTS = [
    "The capital of France is",
    "Review: The pasta was cold and the waiter ignored us.\nSentiment:",
    "def fibonacci(n):",
    "Once upon a time, in a village by the sea,",
]


def test_greedy_generation_equals_transformers(embedded_path):
    engine = GemmaEngine.from_pretrained(embedded_path, device="cpu", dtype="float32")
    outs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24))
    hf = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            ref = hf.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        assert list(out.token_ids) == ref.tolist(), prompt
        assert out.text == tokenizer.decode(ref, skip_special_tokens=True)
    assert "Paris" in outs[0].text or "capital" in outs[0].text  # a real model, not noise
