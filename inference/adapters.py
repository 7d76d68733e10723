"""The job's --adapter as the handler loads it: its kind, its hash (the rows' lineage) and, for a head, the
head itself, checked against the engine's model before the runner answers any record.

LoRA adapters are merged into the weights by the engine at load (``gemma_ops.adapters.lora``): a merged
adapter costs nothing per record, and a job runs one adapter. Heads stay beside the model and read its
final hidden states (``inference.heads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_ops.adapters.base import HEAD_FILES, LORA_FILES, adapter_digest, adapter_kind


@dataclass(frozen=True)
class LoadedAdapter:
    source: str  # what the job named: a folder or gs:// URI
    folder: Path  # its local copy
    kind: str  # "lora" | "head"
    sha256: str  # over its defining files (gemma_ops.adapters.base.adapter_digest)

    @classmethod
    def read(cls, source: str, folder: Path) -> LoadedAdapter:
        kind = adapter_kind({p.name for p in folder.iterdir()}, source)
        names = LORA_FILES if kind == "lora" else HEAD_FILES
        return cls(source, folder, kind, adapter_digest({n: (folder / n).read_bytes() for n in names}))

    @property
    def lineage(self) -> str:
        """What the rows' adapter column says: the source and the first 16 hex digits of its sha256."""
        return f"{self.source.rstrip('/')}@sha256:{self.sha256[:16]}"

    def head(self, engine: Any, checkpoint: Path, model_name: str) -> Any:
        """The classification head, checked against the engine's model (feature size, then base hash);
        None for a LoRA adapter (already merged)."""
        if self.kind != "head":
            return None
        from gemma_ops.adapters.head import check_head, load_head

        head = load_head(self.folder)
        check_head(head, engine.model.config, checkpoint, model_name, self.source)
        return head
