"""The whole job on gs:// only: input, output and the model folder on the loopback GCS emulator, a real tiny
Gemma 3, FnApiRunner, no credentials and no credential-lookup wait."""

from __future__ import annotations

import io
import json
import time

import pyarrow.parquet as pq

from gemma_ops.checkpoints import CACHE_ENV
from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from tests.reliability.jobs import run_job

LINES = [
    {"id": "a", "text": "Great phone, I love the battery.", "shop": "north"},
    {"id": "b", "text": "It broke in a week. Refund please."},
    "not json at all",
    {"id": "c", "text": "   "},
    {"id": 4, "text": "What are your opening hours?"},
]


def _jsonl(lines) -> str:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)


def test_gs_input_output_and_model(gcs, tiny_gemma3, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    models, inputs, outputs = gcs.create_bucket("models"), gcs.create_bucket("in"), gcs.create_bucket("out")
    for path in sorted(tiny_gemma3.iterdir()):
        models.blob(f"tiny/{path.name}").upload_from_filename(str(path))
    inputs.blob("reviews/part-1.jsonl").upload_from_string(_jsonl(LINES[:3]))
    inputs.blob("reviews/part-2.jsonl").upload_from_string(_jsonl(LINES[3:]))
    inputs.blob("elsewhere/skip.jsonl").upload_from_string(_jsonl([{"id": "x", "text": "not matched"}]))
    outputs.blob("run/results-00000-of-00009.parquet").upload_from_string(b"a stale file from an older run")

    config = JobConfig(
        input="gs://in/reviews/*.jsonl",
        output="gs://out/run",
        model="gs://models/tiny",
        run_id="gcs",
        num_shards=1,
        max_error_rate=0.4,  # two of the five lines are bad on purpose
    )
    handler = GemmaModelHandler(ModelSettings(model=config.model, device="cpu", dtype="float32", model_copies=0))
    started = time.monotonic()
    summary = run_job(config, handler)
    assert time.monotonic() - started < 60  # no ~25 s credential retries

    names = sorted(blob.name for blob in gcs.list_blobs("out"))
    assert names == [
        "run/_PUBLISHED.json",
        "run/errors-00000-of-00001.jsonl",
        "run/report.html",
        "run/report.json",
        "run/results-00000-of-00001.parquet",
    ]
    assert summary.result_files == ("gs://out/run/results-00000-of-00001.parquet",)
    table = pq.read_table(io.BytesIO(outputs.blob("run/results-00000-of-00001.parquet").download_as_bytes()))
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == ["4", "a", "b"]
    assert {r["model"] for r in rows} == {"gs://models/tiny"} and {r["run_id"] for r in rows} == {"gcs"}
    assert all(r["label"] in ("positive", "negative", "neutral") for r in rows)
    assert json.loads(rows[1]["extra"]) == {"shop": "north"}
    errors = [json.loads(x) for x in outputs.blob("run/errors-00000-of-00001.jsonl").download_as_text().splitlines()]
    assert sorted((e["stage"], e["id"]) for e in errors) == [("read", None), ("validate", "c")]
    assert (summary.input_lines, summary.rows, summary.errors) == (5, 3, 2)
    # the model folder was copied once to the local cache, weights and all
    (copy,) = (tmp_path / "cache" / "gcs").iterdir()
    assert (copy / "model.safetensors").stat().st_size == (tiny_gemma3 / "model.safetensors").stat().st_size
