"""--adapter through the whole pipeline on a tiny Gemma 3: a LoRA adapter merged at load, a classification head
answering from one feature read per record, the adapter and its hash in every row, and adapters that cannot
run refused before any record is read (a wrong base, a corrupt file), from a local folder or gs://."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gemma_ops.adapters import AdapterError, BaseModel, adapter_digest, model_hash
from gemma_ops.adapters.head import ClassificationHead
from gemma_ops.checkpoints import CACHE_ENV
from gemma_ops.engine import GemmaEngine
from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.batch_inference import main
from pipelines.options import JobConfig
from tests.reliability.jobs import result_rows, run_job
from tests.tiny_models import build_tiny_checkpoint, build_tiny_lora

LABELS = ("bug", "billing", "other")
TEXTS = {"a": "The app crashes when I log in.", "b": "I was charged twice this month.", "c": "Nice weather."}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    gemma3 = build_tiny_checkpoint("gemma3", root / "gemma3")
    gemma2 = build_tiny_checkpoint("gemma2", root / "gemma2")
    lora2 = build_tiny_lora(gemma2, root / "lora2")  # fits gemma3's shapes too: its card tells them apart
    (lora2 / "model_card.json").write_text(json.dumps({"base_model": {"name": "gemma2", "hash": model_hash(gemma2)}}))
    return {"gemma3": gemma3, "gemma2": gemma2, "lora": build_tiny_lora(gemma3, root / "lora"),
            "lora2": lora2, "head": _head(gemma3, root / "head")}  # fmt: skip


def _head(checkpoint: Path, folder: Path) -> Path:
    hidden = json.loads((checkpoint / "config.json").read_text())["hidden_size"]
    generator = torch.Generator().manual_seed(1)
    ClassificationHead(
        labels=("billing", "bug", "other"),  # another order than the task's words: mapped by name
        pooling="last+mean",
        weight=torch.randn(3, 2 * hidden, generator=generator),
        bias=torch.tensor([0.1, -0.2, 0.0]),
        mean=torch.zeros(2 * hidden),
        scale=torch.ones(2 * hidden),
        base=BaseModel("gemma3", model_hash(checkpoint)),
        hidden_size=hidden,
    ).save(folder)
    return folder


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in TEXTS.items()))
    return path


def _rows(models, tmp_path, run_id, adapter=None, factory=None):
    config = JobConfig(
        input=str(_input(tmp_path)), output=str(tmp_path / run_id), task="classify", labels=LABELS,
        model=str(models["gemma3"]), run_id=run_id, device="cpu", dtype="float32", model_copies=0, adapter=adapter,
    )  # fmt: skip
    kwargs = {"engine_factory": factory} if factory else {}
    handler = GemmaModelHandler(ModelSettings.of(config), **kwargs)
    return {row["id"]: row for row in result_rows(run_job(config, handler))}


def _sha(folder: Path, names) -> str:
    return adapter_digest({n: (folder / n).read_bytes() for n in names})[:16]


def test_a_lora_adapter_is_merged_and_named_in_every_row(models, tmp_path):
    plain = _rows(models, tmp_path, "plain")
    adapted = _rows(models, tmp_path, "lora", adapter=str(models["lora"]))
    sha = _sha(models["lora"], ("adapter_config.json", "adapter_model.safetensors"))
    assert {row["adapter"] for row in adapted.values()} == {f"{models['lora']}@sha256:{sha}"}
    assert {row["adapter"] for row in plain.values()} == {None}
    assert all(adapted[k]["label_scores"] != plain[k]["label_scores"] for k in TEXTS)
    assert adapted["a"]["result_key"] != plain["a"]["result_key"]  # --adapter is part of the model's key


def test_a_head_answers_from_one_feature_read_per_record(models, tmp_path):
    log = tmp_path / "calls.txt"  # the handler is pickled to the worker: calls are recorded in a file

    class Recording(GemmaEngine):
        def score(self, *args, **kwargs):
            with log.open("a") as f:
                f.write("score\n")
            return super().score(*args, **kwargs)

        def features(self, prompts, **kwargs):
            with log.open("a") as f:
                f.write(f"features {len(prompts)}\n")
            return super().features(prompts, **kwargs)

    rows = _rows(models, tmp_path, "head", models["head"], lambda path, **kw: Recording.from_pretrained(path, **kw))
    assert log.read_text().splitlines() == [
        "features 3"
    ]  # no label scoring, no calibration prior: one read of each record
    sha = _sha(models["head"], ("head.json", "head.safetensors"))
    assert {row["adapter"] for row in rows.values()} == {f"{models['head']}@sha256:{sha}"}
    # the same probabilities as the head over the engine's features of the pipeline's prompt
    from gemma_ops.adapters.head import load_head
    from inference.runner import EngineRunner
    from transforms.registry import shortcut

    head, tasks = load_head(models["head"]), shortcut("classify", labels=LABELS)
    engine = GemmaEngine.from_pretrained(models["gemma3"], device="cpu", dtype="float32")
    runner = EngineRunner(engine)
    from common.records import Record

    encoded = runner.prompts.encode(tasks.build_request(Record("a", TEXTS["a"])).fields, tasks.templates[0])
    (features,) = engine.features([encoded.full(0)], pooling="last+mean", shared_prefix=encoded.head)
    probs = head.log_probs(features.vector[None])[0].exp().tolist()
    expected = {"bug": probs[1], "billing": probs[0], "other": probs[2]}
    assert dict(rows["a"]["label_scores"]) == pytest.approx(expected, abs=1e-5)
    assert rows["a"]["label"] == max(expected, key=expected.get)


def test_an_adapter_for_another_base_is_refused_before_any_record(models, tmp_path, capsys):
    argv = ["--input", str(_input(tmp_path)), "--output", str(tmp_path / "out"), "--task", "classify",
            "--labels", ",".join(LABELS), "--model", str(models["gemma3"]), "--runner", "DirectRunner"]  # fmt: skip
    assert main([*argv, "--adapter", str(models["lora2"])]) == 2
    message = capsys.readouterr().err
    assert f"was trained on gemma2 (base model hash {model_hash(models['gemma2'])[:16]})" in message
    assert "run it with --model set to that base model" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(AdapterError, match="trained on gemma2"):  # a worker refuses it too, before answering anything
        GemmaModelHandler(ModelSettings(model=str(models["gemma3"]), adapter=str(models["lora2"]))).load_model()


def test_a_head_for_another_base_names_the_base_it_needs(models, tmp_path):
    other = tmp_path / "head-for-other"
    other.mkdir()
    meta = json.loads((models["head"] / "head.json").read_text())
    meta["base_model"] = {"name": "gemma3-it", "hash": "f" * 64}
    (other / "head.json").write_text(json.dumps(meta))
    (other / "head.safetensors").write_bytes((models["head"] / "head.safetensors").read_bytes())
    handler = GemmaModelHandler(ModelSettings(model=str(models["gemma3"]), adapter=str(other), dtype="float32"))
    with pytest.raises(AdapterError, match=r"trained on gemma3-it \(base model hash ffffffffffffffff\)"):
        handler.load_model()


def test_a_corrupt_adapter_file_is_a_clear_error(models, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (broken / name).write_bytes((models["lora"] / name).read_bytes())
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 40)
    argv = ["--input", str(_input(tmp_path)), "--output", str(tmp_path / "out"), "--task", "classify",
            "--labels", ",".join(LABELS), "--model", str(models["gemma3"]), "--adapter", str(broken)]  # fmt: skip
    assert main(argv) == 2
    assert "adapter_model.safetensors is not a readable safetensors file" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_task_files_adapter_key_and_a_gs_adapter(models, tmp_path, gcs, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    bucket = gcs.create_bucket("adapters")
    for path in sorted(models["lora"].iterdir()):
        bucket.blob(f"tickets/v1/{path.name}").upload_from_filename(str(path))
    task_file = tmp_path / "tasks.yaml"
    task_file.write_text(
        "adapter: gs://adapters/tickets/v1\n"
        "tasks:\n  - name: topic\n    kind: classify\n    labels: [bug, billing, other]\n"
    )
    config = JobConfig(
        input=str(_input(tmp_path)), output=str(tmp_path / "gs"), task_file=str(task_file),
        model=str(models["gemma3"]), run_id="gs", device="cpu", dtype="float32", model_copies=0,
    )  # fmt: skip
    from pipelines.pipeline import make_handler, with_task_adapter
    from transforms.registry import make_task_set

    config = with_task_adapter(config, make_task_set(config))
    rows = result_rows(run_job(config, make_handler(config)))
    sha = _sha(models["lora"], ("adapter_config.json", "adapter_model.safetensors"))
    assert {row["adapter"] for row in rows} == {f"gs://adapters/tickets/v1@sha256:{sha}"}
    assert len(list((tmp_path / "cache" / "gcs-adapters").iterdir())) == 1  # copied once, to the cache
    with pytest.raises(ValueError, match="differ; give one of them"):
        with_task_adapter(dataclasses.replace(config, adapter=str(models["lora"])), make_task_set(config))
