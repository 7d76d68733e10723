"""Which base model an adapter belongs to: the base model hash, adapter hashes, and the model card that records them.

The base model hash is sha256 over the checkpoint's safetensors files (name, size, then content, in name order):
the weights themselves, so a base and an instruction-tuned checkpoint of the same shape differ, while the same
weights copied to another folder (or to gs:// and back) agree. Hashing reads every weight once (about a second
per GB), so it is computed only when an adapter is used, and cached per folder version under the gemma-beam
cache (keyed by the folder's path and its files' sizes and modification times).

An adapter's own hash is sha256 over its defining files (``adapter_config.json`` + ``adapter_model.safetensors``
for LoRA, ``head.json`` + ``head.safetensors`` for a head), so the same bytes hash alike wherever they are.
The model card (``model_card.json``, written by ``make tune``) records the base model's name and hash; an
adapter without one (trained elsewhere with PEFT) is checked by its shapes alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARD = "model_card.json"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
HEAD_FILES = ("head.json", "head.safetensors")
_BLOCK = 1 << 22


class AdapterError(ValueError):
    """An adapter that cannot be used with this model: corrupt, of an unsupported kind, or for another base.
    The message names the adapter and, for a wrong base, the base it needs."""


@dataclass(frozen=True)
class BaseModel:
    """The base model an adapter was trained on: a display name and the base model hash."""

    name: str
    hash: str

    def describe(self) -> str:
        return f"{self.name} (base model hash {self.hash[:16]})"


def model_hash(checkpoint: Path) -> str:
    """sha256 hex of a checkpoint folder's safetensors files; cached per folder version."""
    from gemma_ops.checkpoints import cache_root
    from gemma_ops.weights import checkpoint_files

    files = checkpoint_files(Path(checkpoint))
    listing = [[str(Path(checkpoint).resolve()), f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    key = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]
    cached = cache_root() / "model-hashes" / key
    if cached.is_file():
        return cached.read_text().strip()
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
    value = digest.hexdigest()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_suffix(f".{id(digest)}.tmp")
        temporary.write_text(value)
        temporary.replace(cached)
    except OSError:  # a read-only cache only costs the next call another pass
        pass
    return value


def adapter_digest(files: Mapping[str, bytes]) -> str:
    """sha256 hex over an adapter's defining files (name, size, content; in name order)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{len(files[name])}\0".encode())
        digest.update(files[name])
    return digest.hexdigest()


def adapter_kind(names: set[str], where: str) -> str:
    """``lora`` or ``head`` from the file names a folder holds; AdapterError when it is neither."""
    if set(HEAD_FILES) <= names:
        return "head"
    if set(LORA_FILES) <= names:
        return "lora"
    if "adapter_config.json" in names and "adapter_model.bin" in names:
        raise AdapterError(
            f"adapter {where} has adapter_model.bin: pickled weights can run code and are refused; save it "
            "with safe_serialization=True (PEFT's default) to get adapter_model.safetensors"
        )
    raise AdapterError(
        f"{where} is not an adapter folder: expected {' + '.join(LORA_FILES)} (a LoRA adapter in PEFT's format) "
        f"or {' + '.join(HEAD_FILES)} (a classification head from make tune); found {sorted(names)[:10]}"
    )


def read_card(folder: Path) -> dict[str, Any] | None:
    """The adapter's model card, or None when it has none; AdapterError when it cannot be read."""
    path = Path(folder) / CARD
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{path} is not readable JSON ({err}); restore it from the tune output") from err
    if not isinstance(card, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    return card


def recorded_base(card: Mapping[str, Any] | None, where: str) -> BaseModel | None:
    """The base model a card records (``base_model: {name, hash}``), or None."""
    if card is None or "base_model" not in card:
        return None
    base = card["base_model"]
    if not isinstance(base, dict) or not isinstance(base.get("hash"), str) or not base.get("hash"):
        raise AdapterError(f"{where}: model card's base_model must be {{name: ..., hash: ...}}, got {base!r}")
    return BaseModel(str(base.get("name", "?")), base["hash"])


def check_base(recorded: BaseModel | None, checkpoint: Path, model_name: str, where: str) -> None:
    """Refuse an adapter whose recorded base model hash differs from this checkpoint's."""
    if recorded is None:
        return
    actual = model_hash(checkpoint)
    if actual != recorded.hash:
        raise AdapterError(
            f"adapter {where} was trained on {recorded.describe()}, but this job's model is {model_name} "
            f"(base model hash {actual[:16]}); run it with --model set to that base model, or retrain the "
            "adapter on this one with make tune"
        )
