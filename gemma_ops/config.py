"""GemmaConfig: the architecture facts the decoder needs, read from a checkpoint's HF ``config.json``.

One frozen dataclass covers Gemma 1 (``gemma``), Gemma 2 (``gemma2``) and Gemma 3 text (``gemma3_text``, and the
``text_config`` of a multimodal ``gemma3`` checkpoint). Families are told apart by ``model_type``, never by name.
Both the older flat RoPE keys (``rope_theta``, ``rope_local_base_freq``, ``rope_scaling``) and transformers 5's
``rope_parameters`` are understood. ``EngineConfig`` holds the engine's capacity knobs (slots, prefill budget,
context).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"

_FAMILIES = ("gemma", "gemma2", "gemma3_text")
_TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new")  # both the tanh approximation of GELU


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding for one layer type: base, and linear position scaling (1.0 = none)."""

    theta: float
    linear_factor: float = 1.0


@dataclass(frozen=True)
class GemmaConfig:
    family: str  # "gemma" | "gemma2" | "gemma3_text"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    layer_types: tuple[str, ...]  # SLIDING or FULL per layer
    sliding_window: int | None  # keys a query may see in a sliding layer, itself included
    rope: dict[str, RopeConfig]  # per layer type
    query_pre_attn_scalar: float  # attention scale = query_pre_attn_scalar ** -0.5
    attn_logit_softcapping: float | None
    final_logit_softcapping: float | None
    sandwich_norms: bool  # Gemma 2/3: norms after attention and around the MLP
    qk_norm: bool  # Gemma 3
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None

    @property
    def scaling(self) -> float:
        return self.query_pre_attn_scalar**-0.5

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GemmaConfig:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: a checkpoint folder needs its HF config.json")
        return cls.from_dict(json.loads(config_file.read_text()))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GemmaConfig:
        if raw.get("model_type") == "gemma3" and "text_config" in raw:
            text = dict(raw["text_config"])
            text.setdefault("model_type", "gemma3_text")
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if key in raw and key not in text:
                    text[key] = raw[key]
            raw = text
        family = raw.get("model_type")
        if family not in _FAMILIES:
            raise ValueError(
                f"model_type {family!r} is not a Gemma text model this engine runs; expected one of "
                f"{_FAMILIES} (or a multimodal 'gemma3' config with a text_config)"
            )
        activation = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        # Gemma 1's released configs say "gelu" and mean the tanh GELU (transformers remaps it for Gemma 1
        # only); for Gemma 2/3 "gelu" would mean the exact erf GELU, which this decoder does not implement.
        tanh_gelus = (*_TANH_GELUS, "gelu") if family == "gemma" else _TANH_GELUS
        if activation not in tanh_gelus:
            raise ValueError(f"hidden activation {activation!r} is not supported for {family} (Gemma uses tanh GELU)")
        if raw.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention (an embedding model) is not supported: this is a decoder")

        gemma1 = family == "gemma"
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        head_dim = int(raw.get("head_dim") or hidden // heads)
        layers = int(raw["num_hidden_layers"])
        layer_types = tuple(raw.get("layer_types") or _default_layer_types(family, raw, layers))
        if len(layer_types) != layers or any(t not in (SLIDING, FULL) for t in layer_types):
            raise ValueError(f"layer_types must list {layers} entries of {SLIDING!r}/{FULL!r}: {layer_types}")
        sliding_window = None if gemma1 else raw.get("sliding_window")
        if SLIDING in layer_types and not sliding_window:
            raise ValueError("config has sliding-attention layers but no sliding_window")
        eos = raw.get("eos_token_id", 1)
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            family=family,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 8192)),
            layer_types=layer_types,
            sliding_window=int(sliding_window) if sliding_window else None,
            rope=_rope_configs(family, raw),
            query_pre_attn_scalar=float(head_dim if gemma1 else raw.get("query_pre_attn_scalar") or head_dim),
            attn_logit_softcapping=_optional_float(raw.get("attn_logit_softcapping")) if not gemma1 else None,
            final_logit_softcapping=_optional_float(raw.get("final_logit_softcapping")) if not gemma1 else None,
            sandwich_norms=not gemma1,
            qk_norm=family == "gemma3_text",
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            bos_token_id=raw.get("bos_token_id", 2),
            eos_token_ids=eos_ids,
            pad_token_id=raw.get("pad_token_id", 0),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _default_layer_types(family: str, raw: dict[str, Any], layers: int) -> list[str]:
    """The layer pattern older configs leave implicit (same rule as transformers)."""
    if family == "gemma":
        return [FULL] * layers
    if family == "gemma2":
        return [SLIDING if (i + 1) % 2 else FULL for i in range(layers)]
    pattern = int(raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern") or 6)
    return [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]


def _rope_entry(params: dict[str, Any] | None, default_theta: float) -> RopeConfig:
    params = dict(params or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", default_theta))
    if rope_type == "default":
        return RopeConfig(theta=theta)
    if rope_type == "linear":
        return RopeConfig(theta=theta, linear_factor=float(params["factor"]))
    raise ValueError(f"RoPE type {rope_type!r} is not supported (supported: default, linear)")


def _rope_configs(family: str, raw: dict[str, Any]) -> dict[str, RopeConfig]:
    params = raw.get("rope_parameters")
    if family == "gemma3_text":
        if isinstance(params, dict) and (FULL in params or SLIDING in params):
            return {
                FULL: _rope_entry(params.get(FULL), 1_000_000.0),
                SLIDING: _rope_entry(params.get(SLIDING), 10_000.0),
            }
        global_params = dict(raw.get("rope_scaling") or {})
        global_params["rope_theta"] = raw.get("rope_theta", 1_000_000.0)
        local_params = {"rope_theta": raw.get("rope_local_base_freq", 10_000.0)}
        return {FULL: _rope_entry(global_params, 1_000_000.0), SLIDING: _rope_entry(local_params, 10_000.0)}
    if isinstance(params, dict) and params:
        shared = _rope_entry(params, 10_000.0)
    else:
        flat = dict(raw.get("rope_scaling") or {})
        flat["rope_theta"] = raw.get("rope_theta", 10_000.0)
        shared = _rope_entry(flat, 10_000.0)
    return {FULL: shared, SLIDING: shared}


@dataclass(frozen=True)
class EngineConfig:
    """Capacity and speed knobs. max_context bounds prompt + generated tokens of one request."""

    max_slots: int = 64  # requests decoding at once (KV-cache slots)
    max_batch_tokens: int = 4096  # prompt tokens prefilled in one step (a longer single prompt runs alone)
    max_context: int = 4096
    max_cached_prefixes: int = 4  # score(shared_prefix=...) keys/values kept between calls
    # CPU speed (None: on where oneDNN runs bfloat16 natively and the model is bfloat16 on the CPU):
    prepack_weights: bool | None = None  # linear weights laid out for oneDNN once (gemma_ops.prepack)
    compile_kernels: bool | None = None  # torch.compile'd elementwise work (gemma_ops.fused) + C decode attention
    decode_graphs: bool | None = None  # static-shape decode step: None = on CUDA only (as CUDA graphs)

    def __post_init__(self) -> None:
        for name in ("max_slots", "max_batch_tokens", "max_context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
