"""Tiny random Gemma checkpoints (HF format, safetensors, the real tokenizer) for tests of every package."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
)

from gemma_ops.checkpoints import default_model_path

VOCAB = 262144  # the real Gemma 3 vocabulary, so the real tokenizer.json works with the tiny models
WINDOW = 8


def _tiny_hf_config(family: str):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=0.15,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    if family == "gemma-mqa":
        return GemmaConfig(num_hidden_layers=2, num_key_value_heads=1, **common), GemmaForCausalLM
    if family == "gemma-mha":
        return GemmaConfig(num_hidden_layers=2, num_key_value_heads=4, **common), GemmaForCausalLM
    if family == "gemma2":
        config = Gemma2Config(
            num_hidden_layers=3,
            num_key_value_heads=2,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=2.0,
            **common,
        )
        config._attn_implementation = "eager"  # soft-capping needs the eager path in transformers
        return config, Gemma2ForCausalLM
    if family == "gemma3":
        config = Gemma3TextConfig(
            num_hidden_layers=4,
            num_key_value_heads=2,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=16,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1_000.0},
            },
            **common,
        )
        return config, Gemma3ForCausalLM
    raise ValueError(family)


def build_tiny_checkpoint(family: str, folder: Path, **config_overrides) -> Path:
    """Save a tiny random checkpoint of ``family`` (see FAMILIES) with the real tokenizer files."""
    config, model_cls = _tiny_hf_config(family)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(1234)
    model = model_cls(config).to(torch.float32)
    with torch.no_grad():  # norms start at zero in HF; give them values so (1 + w) is really exercised
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    source = default_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    return folder


FAMILIES = ["gemma-mqa", "gemma-mha", "gemma2", "gemma3"]


def build_tiny_lora(checkpoint: Path, folder: Path, seed: int = 5, **lora_config) -> Path:
    """A PEFT LoRA adapter for a tiny checkpoint with random, nonzero A and B (PEFT starts B at zero, which
    would make any parity check vacuous); saved with PEFT's own save_pretrained."""
    from peft import LoraConfig, get_peft_model

    from gemma_ops.tuning.lora import ALL_LINEAR, load_hf_model

    settings = {"r": 4, "lora_alpha": 8, "target_modules": list(ALL_LINEAR), "init_lora_weights": False}
    model = get_peft_model(load_hf_model(checkpoint), LoraConfig(**{**settings, **lora_config}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
