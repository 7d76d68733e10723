"""A classification head: logistic regression over a frozen model's pooled final-norm hidden states.

Saved as two small files, never pickled: ``head.safetensors`` (``weight`` [C, F], ``bias`` [C], and the feature
standardization ``mean`` / ``scale`` [F]) and ``head.json`` (the labels in order, the feature spec, the base model
and free-form training notes). At inference the head reads the engine's ``features`` (one prefill per record,
no label branches) and turns them into one log-probability per label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gemma_ops.adapters.base import AdapterError, BaseModel, check_base
from gemma_ops.config import GemmaConfig
from gemma_ops.features import POOLINGS

FORMAT = "gemma-beam-head/v1"
META_FILE = "head.json"
TENSOR_FILE = "head.safetensors"
LAYER = "final_norm"  # the only feature layer: the decoder's output after its final norm


def feature_size(pooling: str, hidden_size: int) -> int:
    return 2 * hidden_size if pooling == "last+mean" else hidden_size


@dataclass(frozen=True)
class ClassificationHead:
    """Labels, how features are read, and the logistic regression over them."""

    labels: tuple[str, ...]
    pooling: str
    weight: torch.Tensor  # [C, F]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [F]: features are standardized, (x - mean) / scale, before the linear layer
    scale: torch.Tensor  # [F]
    base: BaseModel
    hidden_size: int
    notes: dict[str, Any] = field(default_factory=dict)  # training settings, prompt digest: not used to predict

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, F] -> [N, C] log-probabilities over the labels."""
        standardized = (features.float() - self.mean) / self.scale
        return torch.log_softmax(standardized @ self.weight.T + self.bias, dim=-1)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale}
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(folder / TENSOR_FILE))
        meta = {
            "format": FORMAT,
            "labels": list(self.labels),
            "features": {"layer": LAYER, "pooling": self.pooling, "hidden_size": self.hidden_size},
            "base_model": {"name": self.base.name, "hash": self.base.hash},
            "notes": self.notes,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_head_meta(raw: bytes, where: str) -> dict[str, Any]:
    """``head.json`` checked: format, labels, feature spec and base model; AdapterError says what is wrong."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{where}/{META_FILE} is not readable JSON ({err}); retrain with make tune") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterError(f"{where}/{META_FILE}: format must be {FORMAT!r}; this file is not a head from make tune")
    labels, features, base = meta.get("labels"), meta.get("features"), meta.get("base_model")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise AdapterError(f"{where}/{META_FILE}: labels must list at least two label names")
    if len(set(labels)) != len(labels):
        raise AdapterError(f"{where}/{META_FILE}: labels repeat: {labels}")
    if (
        not isinstance(features, dict)
        or features.get("layer") != LAYER
        or features.get("pooling") not in POOLINGS
        or not isinstance(features.get("hidden_size"), int)
    ):
        raise AdapterError(
            f"{where}/{META_FILE}: features must be {{layer: {LAYER}, pooling: one of {', '.join(POOLINGS)}, "
            f"hidden_size: N}}, got {features!r}"
        )
    if not isinstance(base, dict) or not isinstance(base.get("hash"), str) or not base["hash"]:
        raise AdapterError(f"{where}/{META_FILE}: base_model must be {{name: ..., hash: ...}}")
    return meta


def load_head(folder: Path) -> ClassificationHead:
    """Read a head folder; AdapterError for a corrupt or inconsistent one."""
    folder = Path(folder)
    try:
        meta = read_head_meta((folder / META_FILE).read_bytes(), str(folder))
        tensors = load_file(str(folder / TENSOR_FILE))
    except (SafetensorError, OSError) as err:
        raise AdapterError(f"head {folder}: {TENSOR_FILE} is not a readable safetensors file ({err})") from err
    labels, spec = tuple(meta["labels"]), meta["features"]
    size = feature_size(spec["pooling"], spec["hidden_size"])
    expected = {"weight": (len(labels), size), "bias": (len(labels),), "mean": (size,), "scale": (size,)}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expected:
        raise AdapterError(f"head {folder}: {TENSOR_FILE} holds {got}, but {META_FILE} implies {expected}")
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()) or bool((tensors["scale"] <= 0).any()):
        raise AdapterError(f"head {folder}: {TENSOR_FILE} holds non-finite values or a non-positive scale")
    return ClassificationHead(
        labels=labels,
        pooling=spec["pooling"],
        weight=tensors["weight"],
        bias=tensors["bias"],
        mean=tensors["mean"],
        scale=tensors["scale"],
        base=BaseModel(str(meta["base_model"].get("name", "?")), meta["base_model"]["hash"]),
        hidden_size=spec["hidden_size"],
        notes=dict(meta.get("notes") or {}),
    )


def check_head(head: ClassificationHead, config: GemmaConfig, checkpoint: Path, model_name: str, where: str) -> None:
    """Refuse a head trained on another base model: its feature size first (free), then the base model hash."""
    if head.hidden_size != config.hidden_size:
        raise AdapterError(
            f"head {where} reads features of a model with hidden size {head.hidden_size}, but this job's model "
            f"{model_name} has hidden size {config.hidden_size}; it needs base {head.base.describe()}"
        )
    check_base(head.base, checkpoint, model_name, where)


def standardization(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and scale of training features (scale floored so constant features stay finite)."""
    mean = features.float().mean(dim=0)
    return mean, features.float().std(dim=0, unbiased=False).clamp_min(1e-6)
