"""Deterministic benchmark inputs: review-like passages of chosen word counts (no downloads needed)."""

from __future__ import annotations

import random

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
