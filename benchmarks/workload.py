"""Deterministic benchmark inputs: review-like passages of chosen word counts (no downloads needed)."""

from __future__ import annotations

import random
from pathlib import Path

_SENTENCES = [
    "The delivery arrived two days later than the tracking page promised.",
    "I have used this blender every morning for three months and it still runs quietly.",
    "The staff at the front desk were friendly and answered every question we had.",
    "Battery life is much shorter than advertised, barely lasting through a workday.",
    "Our table waited forty minutes before anyone came to take the order.",
    "The app crashes whenever I try to upload more than one photo at a time.",
    "Setup took less than ten minutes and the instructions were clear.",
    "The fabric feels cheap and started to pill after the second wash.",
    "Customer support replaced the broken part without asking for a receipt.",
    "The room was clean, but the air conditioning rattled all night long.",
    "This is the third time my subscription renewed without any reminder email.",
    "The soup was rich and well seasoned, and the bread was baked that morning.",
    "After the latest update the screen brightness resets every time I unlock it.",
    "Prices went up again this quarter while portion sizes got smaller.",
    "The hiking boots needed no breaking in and kept my feet dry in the rain.",
    "I asked for a refund two weeks ago and still have not heard back.",
    "The headphones pair instantly with my laptop and my phone.",
    "Parking near the venue was impossible, so we missed the opening act.",
    "The manual is vague about which cleaning products are safe to use.",
    "Every dish on the tasting menu was a surprise, in the best possible way.",
]


def passage(words: int, rng: random.Random) -> str:
    """About ``words`` words of review-like prose (whole sentences, trimmed to the count)."""
    out: list[str] = []
    while len(out) < words:
        out.extend(rng.choice(_SENTENCES).split())
    return " ".join(out[:words])


def passages(count: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """``count`` passages with word counts spread evenly over [min_words, max_words], in shuffled order."""
    rng = random.Random(seed)
    step = (max_words - min_words) / max(count - 1, 1)
    lengths = [round(min_words + i * step) for i in range(count)]
    rng.shuffle(lengths)
    return [passage(n, rng) for n in lengths]


def sentiment_prompt(text: str) -> str:
    return f"Review: {text}\nSentiment (positive, negative or neutral):"


# google/gemma-2b's config.json (its weights cannot be downloaded here; random ones have the same cost).
GEMMA_2B_CONFIG = {
    "architectures": ["GemmaForCausalLM"],
    "model_type": "gemma",
    "vocab_size": 256000,
    "hidden_size": 2048,
    "intermediate_size": 16384,
    "num_hidden_layers": 18,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_act": "gelu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}


def gpu_prompts(count: int, tokens: int) -> list[list[int]]:
    """The GPU workload: ``count`` random prompts of ``tokens`` ids, each starting with <bos>."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return [[2, *torch.randint(100, 250_000, (tokens - 1,), generator=gen).tolist()] for _ in range(count)]


def random_gemma2b_checkpoint(folder: Path) -> Path:
    """Save random bf16 weights in google/gemma-2b's shape (plus the embedded tokenizer) once."""
    import shutil

    import torch
    from transformers import GemmaConfig, GemmaForCausalLM

    from gemma_ops import default_model_path

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = GemmaConfig(**{k: v for k, v in GEMMA_2B_CONFIG.items() if k not in ("architectures", "model_type")})
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = GemmaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_path() / name, folder / name)
    return folder
