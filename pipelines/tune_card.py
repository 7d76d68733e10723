"""model_card.json: what an adapter was trained on and how, and how well it did (read back by --adapter's checks)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.quality import Quality
from pipelines.tune_data import Labelled, data_hash

if TYPE_CHECKING:  # tune.py calls write_card; the names are for the reader only
    from pipelines.tune import MethodResult, Tuner

CARD_FORMAT = "gemma-beam-model-card/v1"


def write_card(
    folder: Path,
    method: str,
    tuner: Tuner,
    examples: list[Labelled],
    how: str,
    qualities: dict[str, Quality],
    results: dict[str, MethodResult],
) -> None:
    """model_card.json beside the adapter: what it was trained on and how, and how well it did."""
    config = tuner.config
    settings: dict[str, Any] = {"seed": config.seed, "dtype": config.dtype}
    settings.update(asdict(tuner.lora_settings() if method == "lora" else tuner.head_settings()))
    card = {
        "format": CARD_FORMAT,
        "method": method,
        "base_model": {"name": tuner.base_name, "hash": tuner.base_hash},
        "data": {
            "source": config.input,
            "examples": len(examples),
            "sha256": data_hash(examples),
            "text_field": config.text_field,
            "label_field": config.label_field,
        },
        "task": {
            "name": tuner.task.name,
            "labels": tuner.names,
            "words": tuner.words,
            "fingerprint": tuner.tasks.fingerprint(),
        },
        "settings": settings,
        "evaluation": how,
        "metrics": {
            name: {**asdict(q), "train_seconds": round(results[name].train_seconds, 2)} for name, q in qualities.items()
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_card.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
