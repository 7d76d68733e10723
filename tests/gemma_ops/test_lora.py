"""LoRA adapters in PEFT's format, merged by our loader: the same logits as transformers + PEFT (float32), and
every adapter that cannot fit this model refused with a message that says why."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from gemma_ops.adapters import AdapterError, model_hash
from gemma_ops.adapters.lora import load_lora, read_lora
from gemma_ops.config import GemmaConfig
from gemma_ops.engine import GemmaEngine
from gemma_ops.model import Segment
from gemma_ops.tuning.lora import load_hf_model
from gemma_ops.weights import load_model
from tests.tiny_models import WINDOW, build_tiny_lora

IDS = [2, *range(100, 100 + 3 * WINDOW)]  # longer than the sliding window


def _our_logits(model) -> torch.Tensor:
    model.init_rope(64)
    hidden = model.forward_packed(torch.tensor(IDS), torch.arange(len(IDS)), [Segment(0, len(IDS))])
    return model.logits(hidden)


def _peft_logits(checkpoint, adapter) -> torch.Tensor:
    model = PeftModel.from_pretrained(load_hf_model(checkpoint), str(adapter)).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0]


@pytest.mark.parametrize(
    ("family", "lora_config"),
    [
        ("gemma-mqa", {}),
        ("gemma-mha", {"target_modules": ["q_proj", "v_proj", "down_proj"]}),
        ("gemma2", {}),
        ("gemma3", {"use_rslora": True}),
        ("gemma3", {"rank_pattern": {"layers.1.mlp.up_proj": 2}, "alpha_pattern": {"k_proj": 3}}),
    ],
)
def test_merged_adapter_gives_transformers_and_peft_logits(tiny_checkpoints, tmp_path, family, lora_config):
    checkpoint = tiny_checkpoints[family]
    adapter = build_tiny_lora(checkpoint, tmp_path / "adapter", **lora_config)
    model = load_model(checkpoint, "cpu", torch.float32)
    base = _our_logits(model)
    load_lora(model, adapter, checkpoint, checkpoint.name)
    ours = _our_logits(model)
    torch.testing.assert_close(ours, _peft_logits(checkpoint, adapter), atol=3e-4, rtol=1e-4)
    assert (ours - base).abs().max() > 0.05  # the adapter really changes the model


def test_engine_from_pretrained_merges_the_adapter(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["gemma3"]
    adapter = build_tiny_lora(checkpoint, tmp_path / "adapter")
    plain = GemmaEngine.from_pretrained(checkpoint, device="cpu", dtype="float32")
    adapted = GemmaEngine.from_pretrained(checkpoint, device="cpu", dtype="float32", adapter=adapter)
    prompt = ["The weather today is"]
    assert plain.score(prompt, [" warm", " cold"])[0].logprobs != adapted.score(prompt, [" warm", " cold"])[0].logprobs
    torch.testing.assert_close(_our_logits(adapted.model), _peft_logits(checkpoint, adapter), atol=3e-4, rtol=1e-4)


def test_adapter_for_another_base_names_the_base_it_needs(tiny_checkpoints, tmp_path):
    adapter = build_tiny_lora(tiny_checkpoints["gemma3"], tmp_path / "adapter")
    model = load_model(tiny_checkpoints["gemma2"], "cpu", torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterError, match=r"needs .*gemma3"):
        load_lora(model, adapter, tiny_checkpoints["gemma2"], "gemma2")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing merged


def test_recorded_base_hash_must_match(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["gemma3"]
    other = tmp_path / "other-base"  # same shapes, different weights (an instruction-tuned sibling, say)
    shutil.copytree(checkpoint, other)
    weights = load_file(str(other / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1.0
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    adapter = build_tiny_lora(other, tmp_path / "adapter")
    card = {"base_model": {"name": "other-base", "hash": model_hash(other)}}
    (adapter / "model_card.json").write_text(json.dumps(card))
    assert model_hash(other) != model_hash(checkpoint)
    model = load_model(checkpoint, "cpu", torch.float32)
    with pytest.raises(AdapterError, match=r"trained on other-base \(base model hash [0-9a-f]{16}\)"):
        load_lora(model, adapter, checkpoint, "gemma3")
    load_lora(load_model(other, "cpu", torch.float32), adapter, other, "other-base")  # its own base is fine


def test_model_hash_follows_content_not_location(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_BEAM_CACHE", str(tmp_path / "cache"))
    copy = shutil.copytree(tiny_checkpoints["gemma2"], tmp_path / "copy")
    first = model_hash(copy)
    assert first == model_hash(tiny_checkpoints["gemma2"]) and len(first) == 64
    assert list((tmp_path / "cache" / "model-hashes").iterdir())  # cached for the next call
    assert model_hash(copy) == first != model_hash(tiny_checkpoints["gemma3"])


def test_corrupt_adapter_files_are_refused(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["gemma3"]
    config = GemmaConfig.from_pretrained(checkpoint)
    adapter = build_tiny_lora(checkpoint, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors is not a readable safetensors file"):
        read_lora(adapter, config, "gemma3")
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match=r"adapter_config\.json is not readable JSON"):
        read_lora(adapter, config, "gemma3")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, r"DoRA \(use_dora\) is not supported"),
        ({"modules_to_save": ["lm_head"]}, r"modules_to_save\) is not supported"),
        ({"bias": "all"}, "trains biases"),
        ({"peft_type": "IA3"}, "peft_type must be LORA"),
    ],
)
def test_unsupported_adapter_kinds_are_refused(tiny_checkpoints, tmp_path, change, message):
    checkpoint = tiny_checkpoints["gemma3"]
    adapter = build_tiny_lora(checkpoint, tmp_path / "adapter")
    config_file = adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    with pytest.raises(AdapterError, match=message):
        read_lora(adapter, GemmaConfig.from_pretrained(checkpoint), "gemma3")


def test_embedding_adapters_are_refused(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints["gemma3"]
    adapter = build_tiny_lora(checkpoint, tmp_path / "adapter", target_modules=["q_proj", "embed_tokens"])
    with pytest.raises(AdapterError, match="embedding adapters and other kinds are not supported"):
        read_lora(adapter, GemmaConfig.from_pretrained(checkpoint), "gemma3")
