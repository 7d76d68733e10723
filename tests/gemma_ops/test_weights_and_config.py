"""Strict checkpoint loading and config parsing across Gemma families."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from gemma_ops.config import FULL, SLIDING, GemmaConfig
from gemma_ops.weights import load_model


def _copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_weights(folder, edit) -> None:
    file = folder / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"), "qkv_proj.weight is fused from 3"),
        (lambda t: t.pop("model.norm.weight"), "lacks tensors the model needs: ['norm.weight']"),
        (
            lambda t: t.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(2)),
            "does not use: ['model.layers.0.mlp.extra.weight']",
        ),
        (
            lambda t: t.__setitem__("model.layers.0.mlp.down_proj.weight", torch.zeros(64, 95)),
            "layers.0.mlp.down_proj.weight has shape (64, 95)",
        ),
    ],
)
def test_loading_is_strict_and_names_the_tensor(tiny_checkpoints, tmp_path, edit, message):
    folder = _copy_checkpoint(tiny_checkpoints["gemma-mqa"], tmp_path / "ckpt")
    _edit_weights(folder, edit)
    with pytest.raises(ValueError) as err:
        load_model(folder, "cpu", torch.float32)
    assert message in str(err.value)


def test_pickled_weights_are_refused(tiny_checkpoints, tmp_path):
    folder = _copy_checkpoint(tiny_checkpoints["gemma-mqa"], tmp_path / "ckpt")
    tensors = load_file(folder / "model.safetensors")
    torch.save(tensors, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="pickled weights are refused"):
        load_model(folder, "cpu", torch.float32)


def test_sharded_checkpoint_loads_identically(tiny_checkpoints, tmp_path):
    source = tiny_checkpoints["gemma3"]
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="8MB", safe_serialization=True)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    one = load_model(source, "cpu", torch.float32).state_dict()
    many = load_model(tmp_path / "sharded", "cpu", torch.float32).state_dict()
    assert one.keys() == many.keys()
    assert all(torch.equal(one[k], many[k]) for k in one)


def test_multimodal_gemma3_checkpoint_loads_its_language_model(tiny_checkpoints, tmp_path):
    """A Gemma 3 multimodal folder: config with text_config, weights under language_model, a vision tower."""
    source = tiny_checkpoints["gemma3"]
    folder = tmp_path / "mm"
    folder.mkdir()
    text_config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({"model_type": "gemma3", "text_config": text_config, "vision_config": {"hidden_size": 8}})
    )
    tensors = load_file(source / "model.safetensors")
    renamed = {k.replace("model.", "language_model.model.", 1): v for k, v in tensors.items()}
    renamed["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(8, 3, 2, 2)
    renamed["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(8, 64)
    save_file(renamed, folder / "model.safetensors")
    text_only = load_model(source, "cpu", torch.float32).state_dict()
    multimodal = load_model(folder, "cpu", torch.float32).state_dict()
    assert all(torch.equal(text_only[k], multimodal[k]) for k in text_only)


def test_configs_of_each_family_from_published_style_json():
    gemma_7b = GemmaConfig.from_dict(
        {
            "model_type": "gemma",
            "vocab_size": 256000,
            "hidden_size": 3072,
            "intermediate_size": 24576,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "head_dim": 256,
            "hidden_act": "gelu",
            "rope_theta": 10000.0,
        }
    )
    assert gemma_7b.layer_types == (FULL,) * 28 and gemma_7b.scaling == 256**-0.5
    assert not gemma_7b.sandwich_norms and not gemma_7b.qk_norm and gemma_7b.sliding_window is None

    gemma2_27b = GemmaConfig.from_dict(
        {
            "model_type": "gemma2",
            "vocab_size": 256000,
            "hidden_size": 4608,
            "intermediate_size": 36864,
            "num_hidden_layers": 4,
            "num_attention_heads": 32,
            "num_key_value_heads": 16,
            "head_dim": 128,
            "query_pre_attn_scalar": 144,
            "sliding_window": 4096,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "hidden_activation": "gelu_pytorch_tanh",
        }
    )
    assert gemma2_27b.layer_types == (SLIDING, FULL, SLIDING, FULL)
    assert gemma2_27b.scaling == 144**-0.5 and gemma2_27b.attn_logit_softcapping == 50.0

    gemma3_4b = GemmaConfig.from_dict(
        {
            "model_type": "gemma3",
            "text_config": {
                "hidden_size": 2560,
                "intermediate_size": 10240,
                "num_hidden_layers": 12,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "head_dim": 256,
                "vocab_size": 262208,
                "rope_local_base_freq": 10000.0,
                "rope_theta": 1000000.0,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024,
            },
            "eos_token_id": [1, 106],
        }
    )
    assert gemma3_4b.family == "gemma3_text" and gemma3_4b.qk_norm
    assert gemma3_4b.layer_types == ((SLIDING,) * 5 + (FULL,)) * 2
    assert gemma3_4b.rope[FULL].linear_factor == 8.0 and gemma3_4b.rope[FULL].theta == 1e6
    assert gemma3_4b.rope[SLIDING].theta == 1e4 and gemma3_4b.rope[SLIDING].linear_factor == 1.0
    assert gemma3_4b.eos_token_ids == (1, 106)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model_type": "llama"}, "model_type 'llama' is not a Gemma text model"),
        (
            {"model_type": "gemma2", "hidden_activation": "relu", "hidden_size": 8},
            "hidden activation 'relu' is not supported",
        ),
        (  # for Gemma 2/3 transformers reads "gelu" as the exact GELU, which this decoder does not run
            {"model_type": "gemma3_text", "hidden_activation": "gelu", "hidden_size": 8},
            "hidden activation 'gelu' is not supported for gemma3_text",
        ),
        (
            {"model_type": "gemma3_text", "use_bidirectional_attention": True, "hidden_size": 8},
            "use_bidirectional_attention",
        ),
    ],
)
def test_unsupported_configs_are_rejected(raw, message):
    with pytest.raises(ValueError, match=message):
        GemmaConfig.from_dict(raw)
