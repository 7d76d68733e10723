"""LoRA adapters in PEFT's format, merged into the decoder's weights at load.

PEFT saves ``adapter_config.json`` and ``adapter_model.safetensors`` with tensors named after transformers'
modules, ``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`` and ``...lora_B.weight``. Each pair
is mapped with the checkpoint's own name table (``gemma_ops.weights``) onto our weights: q/k/v land in their
row block of the fused ``qkv_proj``, gate/up in theirs of ``gate_up_proj``. The merge adds
``scaling * B @ A`` (scaling = alpha / r, or alpha / sqrt(r) with rsLoRA; per module with PEFT's rank and
alpha patterns), computed in float32 and cast to the model's dtype.

Merged, not applied on the side: a merged adapter costs nothing at inference (the same matmuls as the base
model), and a worker holds one adapter per model copy, which is what a job needs (one model per job). Unmerged
LoRA would pay two extra skinny matmuls per projection per token to serve several adapters from one copy.

Everything is checked before a weight changes: the config (plain LoRA only: no DoRA, no trained biases, no
modules_to_save, no embedding or output-layer adapters), the names (every tensor must map to a projection of
this model), the shapes (an adapter for another size of model names the base it needs) and, when the model
card records one, the base model hash.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from gemma_ops.adapters.base import AdapterError, BaseModel, check_base, read_card, recorded_base
from gemma_ops.config import GemmaConfig
from gemma_ops.model import GemmaModel
from gemma_ops.weights import _layer_table, map_name

_PREFIX = "base_model.model."
_TENSOR = re.compile(r"(?P<module>.+)\.(?P<side>lora_A|lora_B)\.weight")
# Config keys whose non-default values change what the adapter computes beyond W + scaling * B @ A.
_UNSUPPORTED = {
    "use_dora": "DoRA (use_dora)",
    "modules_to_save": "fully trained modules (modules_to_save)",
    "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
    "layer_replication": "layer replication",
    "lora_bias": "trained LoRA biases (lora_bias)",
    "fan_in_fan_out": "fan_in_fan_out weights (Conv1D models)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
}


@dataclass(frozen=True)
class LoraDelta:
    """One adapted projection: our fused weight's name, the row block it changes, and its low-rank factors."""

    target: str  # our parameter name, e.g. layers.3.attn.qkv_proj.weight
    part: int  # which checkpoint tensor of a fused weight (q, k, v / gate, up); 0 for the others
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scaling: float

    def delta(self) -> torch.Tensor:
        return (self.b.float() @ self.a.float()) * self.scaling


@dataclass(frozen=True)
class LoraAdapter:
    """A read, validated LoRA adapter for one model."""

    source: str
    deltas: tuple[LoraDelta, ...]
    base: BaseModel | None  # recorded by make tune's model card
    declared_base: str  # PEFT's base_model_name_or_path, for messages


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{path} is not readable JSON ({err}); save the adapter again with PEFT") from err
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type must be LORA, got {config.get('peft_type')!r}")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"adapter {folder}: {what} is not supported; train plain LoRA on the projections")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"adapter {folder}: bias={config['bias']!r} trains biases; Gemma has none (use 'none')")
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "adapter_model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterError(
            f"{path} is not a readable safetensors file ({err}); copy the adapter again or retrain it"
        ) from err


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA), with PEFT's per-module rank and alpha patterns."""

    def pattern_value(patterns: dict[str, Any], default: Any) -> Any:
        for key, value in (patterns or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    declared_rank = pattern_value(config.get("rank_pattern"), config.get("r", rank))
    if declared_rank != rank:
        raise AdapterError(
            f"adapter tensors for {module} have rank {rank}, but adapter_config.json says {declared_rank}"
        )
    alpha = float(pattern_value(config.get("alpha_pattern"), config.get("lora_alpha", rank)))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _part_rows(config: GemmaConfig, target: str, part: int, rows: int) -> tuple[int, int]:
    """The rows [start, end) of a weight with ``rows`` rows that one checkpoint tensor occupies."""
    if target.endswith("qkv_proj.weight"):
        sizes = [config.num_heads * config.head_dim] + [config.num_kv_heads * config.head_dim] * 2
    elif target.endswith("gate_up_proj.weight"):
        sizes = [config.intermediate_size] * 2
    else:
        sizes = [rows]
    start = sum(sizes[:part])
    return start, start + sizes[part]


def read_lora(folder: Path, config: GemmaConfig, model_name: str) -> LoraAdapter:
    """Read and check a PEFT LoRA folder against ``config``; AdapterError says what is wrong."""
    folder = Path(folder)
    peft_config = _read_config(folder)
    declared = str(peft_config.get("base_model_name_or_path") or "unknown")
    base = recorded_base(read_card(folder), str(folder))
    needs = base.describe() if base else f"{declared!r} (adapter_config.json)"
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in _read_tensors(folder).items():
        match = _TENSOR.fullmatch(name.removeprefix(_PREFIX))
        if match is None:
            raise AdapterError(
                f"adapter {folder}: tensor {name} is not a LoRA A/B weight of a linear layer "
                "(embedding adapters and other kinds are not supported)"
            )
        pairs.setdefault(match["module"], {})[match["side"]] = tensor
    if not pairs:
        raise AdapterError(f"adapter {folder}: adapter_model.safetensors holds no LoRA tensors")
    table = _layer_table(config)
    deltas = []
    for module in sorted(pairs):
        sides = pairs[module]
        if set(sides) != {"lora_A", "lora_B"}:
            raise AdapterError(f"adapter {folder}: {module} has {sorted(sides)} but needs both lora_A and lora_B")
        mapped = map_name(f"{module}.weight", config, table)
        if mapped is None or mapped[0] in ("embed.weight", "lm_head.weight") or "norm" in mapped[0]:
            raise AdapterError(
                f"adapter {folder} adapts {module}, which is not a projection of this model ({model_name}: "
                f"{config.family}, {config.num_layers} layers); it needs base {needs}"
            )
        target, part = mapped
        a, b = sides["lora_A"], sides["lora_B"]
        deltas.append(LoraDelta(target, part, a, b, _scaling(peft_config, module, a.shape[0])))
    return LoraAdapter(str(folder), tuple(deltas), base, needs)


def _rows(
    delta: LoraDelta, config: GemmaConfig, weight: torch.Tensor, adapter: LoraAdapter, name: str
) -> tuple[int, int]:
    """The rows the delta changes, after checking its shapes against the weight it changes."""
    start, end = _part_rows(config, delta.target, delta.part, weight.shape[0])
    a, b = delta.a, delta.b
    expected = (end - start, weight.shape[1])
    if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != expected:
        raise AdapterError(
            f"adapter {adapter.source} does not fit this model ({name}): {delta.target} part {delta.part} is "
            f"{expected[0]}x{expected[1]} here but the adapter's B @ A is {tuple(b.shape)} @ {tuple(a.shape)}; "
            f"it was trained for another base model and needs {adapter.declared_base}"
        )
    return start, end


def weight_shape(config: GemmaConfig, target: str) -> tuple[int, int]:
    """The [out, in] shape our fused weight ``target`` has for ``config`` (no weights needed)."""
    hidden, heads = config.hidden_size, config.num_heads * config.head_dim
    if target.endswith("qkv_proj.weight"):
        return heads + 2 * config.num_kv_heads * config.head_dim, hidden
    if target.endswith("o_proj.weight"):
        return hidden, heads
    if target.endswith("gate_up_proj.weight"):
        return 2 * config.intermediate_size, hidden
    if target.endswith("down_proj.weight"):
        return hidden, config.intermediate_size
    raise AdapterError(f"{target} is not a projection LoRA can adapt")


def check_lora(adapter: LoraAdapter, config: GemmaConfig, checkpoint: Path, model_name: str) -> None:
    """Every shape against ``config``, then the recorded base hash: what merging checks, without the weights
    (the pipeline's preflight)."""
    for delta in adapter.deltas:
        _rows(delta, config, torch.empty(weight_shape(config, delta.target), device="meta"), adapter, model_name)
    check_base(adapter.base, checkpoint, model_name, adapter.source)


def merge_lora(model: GemmaModel, adapter: LoraAdapter, checkpoint: Path, model_name: str) -> None:
    """Check the adapter against the model (every shape, then the recorded base hash), then add it in place."""
    params = dict(model.named_parameters())
    placed = []
    for delta in adapter.deltas:
        if delta.target not in params:
            raise AdapterError(f"adapter {adapter.source}: {delta.target} is not a weight of {model_name}")
        placed.append((delta, _rows(delta, model.config, params[delta.target], adapter, model_name)))
    check_base(adapter.base, checkpoint, model_name, adapter.source)
    with torch.no_grad():
        for delta, (start, end) in placed:
            weight = params[delta.target]
            change = delta.delta().to(weight.device)
            weight[start:end] = (weight[start:end].float() + change).to(weight.dtype)


def load_lora(model: GemmaModel, folder: Path, checkpoint: Path, model_name: str) -> LoraAdapter:
    """Read, check and merge a LoRA folder into ``model`` (see the module docstring)."""
    adapter = read_lora(folder, model.config, model_name)
    merge_lora(model, adapter, checkpoint, model_name)
    return adapter
