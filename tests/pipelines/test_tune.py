"""make tune on tiny data: a head and a LoRA adapter trained twice with one seed are the same bytes; the model card
records the base model, the data and the metrics; the adapters then run in the pipeline's runner."""

from __future__ import annotations

import io
import json

import pytest
from safetensors.torch import load_file

from common.errors import UserInputError
from gemma_ops.adapters import model_hash
from pipelines.tune import TuneConfig, run
from pipelines.tune_config import parse_args
from tests.tiny_models import build_tiny_checkpoint

TEXTS = {
    "sports": ["The team won the match", "A goal in the final minute", "The coach praised the players",
               "Fans cheered at the stadium", "She ran the marathon", "The league table changed"],
    "business": ["Shares fell on the market", "The bank raised rates", "Profits rose this quarter",
                 "The company hired staff", "Oil prices climbed again", "Investors sold the stock"],
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint("gemma3", tmp_path_factory.mktemp("tiny") / "gemma3")


@pytest.fixture
def labelled(tmp_path):
    path = tmp_path / "labelled.jsonl"
    rows = [{"text": t, "label": label} for label, texts in TEXTS.items() for t in texts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(labelled, output, checkpoint, **changes):
    settings = {
        "input": str(labelled),
        "output": str(output),
        "labels": ("sports", "business"),
        "methods": ("head", "lora"),
        "model": str(checkpoint),
        "dtype": "float32",
        "seed": 3,
        "folds": 3,
        "prompt_examples": 1,
        "lora_rank": 2,
        "lora_epochs": 1,
        "lora_batch_size": 4,
        "lora_learning_rate": 1e-2,
        "head_poolings": ("last", "mean"),  # a small grid: L-BFGS steps are slow on a contended CPU
        "head_l2": (0.01,),
    }
    return TuneConfig(**{**settings, **changes})


def test_tune_is_deterministic_with_a_seed_and_writes_cards(labelled, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_BEAM_CACHE", str(tmp_path / "cache"))
    held = tmp_path / "held.jsonl"
    held.write_text('{"text": "The striker scored twice", "label": "sports"}\n'
                    '{"text": "The firm reported losses", "label": "business"}\n')  # fmt: skip
    printed = io.StringIO()
    first = run(_config(labelled, tmp_path / "a", checkpoint, eval_input=str(held)), out=printed)
    second = run(_config(labelled, tmp_path / "b", checkpoint, eval_input=str(held)), out=io.StringIO())
    assert first == second
    assert set(first) == {"zero-shot", "examples in prompt", "head", "lora"}
    assert all(q.count == 2 for q in first.values())
    for name, file in (("head", "head.safetensors"), ("lora", "adapter_model.safetensors")):
        a, b = load_file(str(tmp_path / "a" / name / file)), load_file(str(tmp_path / "b" / name / file))
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
        card = json.loads((tmp_path / "a" / name / "model_card.json").read_text())
        assert card["base_model"]["hash"] == model_hash(checkpoint)
        assert card["data"]["examples"] == 12 and len(card["data"]["sha256"]) == 64
        assert card["metrics"][name]["accuracy"] == first[name].accuracy
        assert card["evaluation"] == f"{held} (2 examples)"
    assert json.loads((tmp_path / "a" / "lora" / "adapter_config.json").read_text())["r"] == 2  # PEFT's format
    lora = load_file(str(tmp_path / "a" / "lora" / "adapter_model.safetensors"))
    assert any(float(t.abs().max()) > 0 for k, t in lora.items() if "lora_B" in k)  # it trained (B starts at 0)
    lines = printed.getvalue().splitlines()
    assert lines[0].split()[:3] == ["method", "n", "accuracy"] and [line.split()[0] for line in lines[1:]] == [
        "zero-shot", "examples", "head", "lora"]  # fmt: skip


def test_small_sets_are_cross_validated_and_seeds_differ(labelled, checkpoint, tmp_path):
    quiet = {"methods": ("head",), "prompt_examples": 0}
    first = run(_config(labelled, tmp_path / "a", checkpoint, **quiet), out=io.StringIO())
    run(_config(labelled, tmp_path / "b", checkpoint, seed=4, **quiet), out=io.StringIO())
    assert first["head"].count == 12 == first["zero-shot"].count  # 3-fold: every example predicted once
    a = json.loads((tmp_path / "a" / "model_card.json").read_text())
    b = json.loads((tmp_path / "b" / "model_card.json").read_text())
    assert a["evaluation"] == "3-fold cross-validation over 12 examples"
    assert a["data"]["sha256"] == b["data"]["sha256"] and a["settings"]["seed"] == 3 != b["settings"]["seed"]
    assert (tmp_path / "a" / "head.safetensors").is_file()  # trained on all 12 after the folds


def test_labels_outside_the_task_are_refused(labelled, checkpoint, tmp_path):
    with pytest.raises(UserInputError, match=r"labelled\.jsonl:1: label 'sports' .* is not one of world, other"):
        run(_config(labelled, tmp_path / "a", checkpoint, labels=("world", "other")), out=io.StringIO())


def test_flags_left_out_keep_the_configs_defaults_and_lists_are_parsed():
    assert parse_args(["--input", "in", "--output", "out", "--labels", "a,b"]) == TuneConfig(
        "in", "out", labels=("a", "b")
    )
    given = parse_args(["--input", "in", "--output", "out", "--task_file", "t.yaml", "--method", "head, lora",
                        "--head_l2", "0.1,1", "--lora_targets", "q_proj,v_proj", "--seed", "3"])  # fmt: skip
    assert (given.methods, given.head_l2, given.lora_targets, given.seed) == (
        ("head", "lora"),
        (0.1, 1.0),
        ("q_proj", "v_proj"),
        3,
    )
    with pytest.raises(UserInputError, match="--method"):
        parse_args(["--input", "in", "--output", "out", "--labels", "a,b", "--method", "lora,svm"])
