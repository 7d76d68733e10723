"""Check an adapter folder against a checkpoint before a job starts: its files, every shape and the recorded base
model hash, with the checkpoint's config alone (no weights are loaded; the hash reads them once, cached)."""

from __future__ import annotations

from pathlib import Path

from gemma_ops.adapters.base import adapter_kind
from gemma_ops.config import GemmaConfig


def check_adapter(folder: Path, checkpoint: Path, model_name: str, where: str) -> str:
    """The adapter's kind (``lora`` | ``head``); AdapterError when it cannot run on this checkpoint."""
    kind = adapter_kind({p.name for p in Path(folder).iterdir()}, where)
    config = GemmaConfig.from_pretrained(checkpoint)
    if kind == "lora":
        from gemma_ops.adapters.lora import check_lora, read_lora

        check_lora(read_lora(Path(folder), config, model_name), config, checkpoint, model_name)
    else:
        from gemma_ops.adapters.head import check_head, load_head

        check_head(load_head(Path(folder)), config, checkpoint, model_name, where)
    return kind
