"""Load an HF safetensors checkpoint (single file or sharded) into GemmaModel, strictly.

A declarative table maps HF tensor names to ours; q/k/v and gate/up projections are concatenated into fused
matrices. Every tensor the model needs must be present with the right shape, and every tensor in the files must
be used: anything else is an error that names the tensor. Only safetensors are read: pickled weights can run code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from gemma_ops.config import GemmaConfig
from gemma_ops.model import GemmaModel

# Prefixes under which a checkpoint keeps the text decoder: causal-LM checkpoints ("model."), multimodal Gemma 3
# as saved by transformers >= 4.50 ("model.language_model.") and as published earlier ("language_model.model.").
_TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Parts of multimodal Gemma 3 checkpoints that the text decoder does not use.
_NON_TEXT_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)
_LM_HEAD_NAMES = ("lm_head.weight", "language_model.lm_head.weight")


def _layer_table(config: GemmaConfig) -> dict[str, tuple[str, int]]:
    """HF per-layer name -> (our per-layer name, index of the part within a fused matrix)."""
    table = {
        "self_attn.q_proj.weight": ("attn.qkv_proj.weight", 0),
        "self_attn.k_proj.weight": ("attn.qkv_proj.weight", 1),
        "self_attn.v_proj.weight": ("attn.qkv_proj.weight", 2),
        "self_attn.o_proj.weight": ("attn.o_proj.weight", 0),
        "mlp.gate_proj.weight": ("mlp.gate_up_proj.weight", 0),
        "mlp.up_proj.weight": ("mlp.gate_up_proj.weight", 1),
        "mlp.down_proj.weight": ("mlp.down_proj.weight", 0),
        "input_layernorm.weight": ("input_norm.weight", 0),
    }
    if config.sandwich_norms:
        table["post_attention_layernorm.weight"] = ("post_attn_norm.weight", 0)
        table["pre_feedforward_layernorm.weight"] = ("pre_mlp_norm.weight", 0)
        table["post_feedforward_layernorm.weight"] = ("post_mlp_norm.weight", 0)
    else:  # Gemma 1 names its pre-MLP norm "post_attention_layernorm"
        table["post_attention_layernorm.weight"] = ("pre_mlp_norm.weight", 0)
    if config.qk_norm:
        table["self_attn.q_norm.weight"] = ("attn.q_norm.weight", 0)
        table["self_attn.k_norm.weight"] = ("attn.k_norm.weight", 0)
    return table


_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)")


def map_name(hf_name: str, config: GemmaConfig, layer_table: dict[str, tuple[str, int]]) -> tuple[str, int] | None:
    """Our parameter name and fused-part index for an HF tensor name; None when it is not ours."""
    if hf_name in _LM_HEAD_NAMES:
        return ("lm_head.weight", 0)
    for prefix in _TEXT_PREFIXES:
        if hf_name.startswith(prefix):
            rest = hf_name[len(prefix) :]
            break
    else:
        return None
    if rest == "embed_tokens.weight":
        return ("embed.weight", 0)
    if rest == "norm.weight":
        return ("norm.weight", 0)
    match = _LAYER_RE.fullmatch(rest)
    if match is None:
        return None
    layer, tail = int(match.group(1)), match.group(2)
    entry = layer_table.get(tail)
    if entry is None or layer >= config.num_layers:
        return None
    return (f"layers.{layer}.{entry[0]}", entry[1])


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (via the shard index when there is one)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / shard for shard in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index} are missing: {missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        hint = f" (found {pickled}: pickled weights are refused, convert them to safetensors)" if pickled else ""
        raise FileNotFoundError(f"no *.safetensors files in {path}{hint}")
    return files


def load_state_dict(path: Path, config: GemmaConfig, multimodal: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read and map every tensor of the checkpoint; fused parts are concatenated in table order."""
    layer_table = _layer_table(config)
    parts: dict[str, dict[int, torch.Tensor]] = {}
    unexpected: list[str] = []
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                target = map_name(name, config, layer_table)
                if target is None:
                    if multimodal and name.startswith(_NON_TEXT_PREFIXES):
                        continue
                    unexpected.append(name)
                    continue
                ours, part = target
                if part in parts.setdefault(ours, {}):
                    raise ValueError(f"tensor {name} appears twice in the checkpoint (as {ours}[{part}])")
                parts[ours][part] = handle.get_tensor(name).to(dtype)
    if unexpected:
        raise ValueError(f"checkpoint {path} has tensors this Gemma config does not use: {unexpected[:10]}")
    part_counts = {name: idx + 1 for name, idx in layer_table.values()}
    state: dict[str, torch.Tensor] = {}
    for ours, pieces in parts.items():
        wanted = part_counts.get(ours.split(".", 2)[-1], 1)
        if len(pieces) != wanted:
            raise ValueError(f"{ours} is fused from {wanted} checkpoint tensors, but only {len(pieces)} exist")
        ordered = [pieces[i] for i in sorted(pieces)]
        state[ours] = ordered[0] if len(ordered) == 1 else torch.cat(ordered, dim=0)
    return state


def load_model(path: str | Path, device: torch.device | str, dtype: torch.dtype) -> GemmaModel:
    """Build GemmaModel from a checkpoint folder, with weights on ``device`` in ``dtype``."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    config = GemmaConfig.from_dict(raw)
    multimodal = raw.get("model_type") == "gemma3"
    state = load_state_dict(path, config, multimodal, dtype)
    with torch.device("meta"):
        model = GemmaModel(config)
    if config.tie_word_embeddings and "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        if not torch.equal(head, state.get("embed.weight", head)):
            raise ValueError("config ties the output layer to the embedding, but lm_head.weight differs from it")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"checkpoint {path} lacks tensors the model needs: {missing[:10]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"tensor {name} has shape {tuple(tensor.shape)} in {path}, "
                f"but the config implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()
