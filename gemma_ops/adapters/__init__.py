"""Adapters that specialize a base model: LoRA weights (PEFT's format, merged at load) and classification heads
over the model's features; and how an adapter is tied to the base model it was trained on."""

from gemma_ops.adapters.base import AdapterError, BaseModel, adapter_digest, adapter_kind, model_hash

__all__ = ["AdapterError", "BaseModel", "adapter_digest", "adapter_kind", "model_hash"]
