"""The pipeline builder end to end with a fake engine: files, schemas, dead letters, run summary, CLI."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.batch_inference import main, parse_args
from pipelines.options import JobConfig
from pipelines.pipeline import build_pipeline
from pipelines.progress import summarize_run
from tests.transforms.fakes import fake_engine_factory, fake_resolver
from transforms.registry import make_task_set

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
LINES = [
    '{"id": "a", "text": "Great, I love it", "stars": 5}',
    '{"id": "b", "text": "Awful and broken"}',
    "",
    "{not json",
    '{"id": "c", "text": "POISON"}',
    '{"text": "hours?"}',
]


def fake_handler() -> GemmaModelHandler:
    return GemmaModelHandler(
        ModelSettings(model_copies=0), engine_factory=fake_engine_factory, model_resolver=fake_resolver
    )


def run(config: JobConfig):
    pipeline = beam.Pipeline(runner=RUNNER, options=PipelineOptions())
    outputs = build_pipeline(pipeline, config, handler=fake_handler())
    result = pipeline.run()
    result.wait_until_finish()
    return summarize_run(result, outputs.results_prefix, outputs.errors_prefix, 1.0)


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def read_errors(folder):
    return sorted(
        (json.loads(line) for f in glob.glob(f"{folder}/errors-*.jsonl") for line in open(f)),
        key=lambda e: e["stage"],
    )


def test_parquet_results_have_the_declared_schema_and_all_records_are_accounted_for(tmp_path, input_file):
    config = JobConfig(
        input=str(input_file), output=str(tmp_path / "out"), task="sentiment", run_id="r1", max_error_rate=0.4
    )
    summary = run(config)
    files = glob.glob(str(tmp_path / "out" / "results-*.parquet"))
    assert files and summary.result_files == tuple(sorted(files))
    table = pq.ParquetDataset(files).read()
    assert table.schema.equals(make_task_set(config).schema(), check_metadata=False)
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    hashed_id = rows[0]["id"]  # the record without an id gets its content hash
    assert [(r["id"], r["label"]) for r in rows] == [
        (hashed_id, "neutral"),
        ("a", "positive"),
        ("b", "negative"),
    ]
    assert rows[1]["extra"] == '{"stars": 5}' and rows[1]["run_id"] == "r1" and rows[1]["model"] == "fake-gemma"
    assert dict(rows[1]["label_scores"]).keys() == {"positive", "negative", "neutral"}
    errors = read_errors(tmp_path / "out")
    assert [(e["stage"], e["id"]) for e in errors] == [("inference", "c"), ("read", None)]
    assert errors[1]["input"] == "{not json"
    # accounting: 5 non-blank lines = 3 rows + 2 dead letters
    assert (summary.input_lines, summary.rows, summary.errors) == (5, 3, 2)
    assert summary.errors_by_stage == {"inference": 1, "read": 1}
    assert summary.prompt_tokens > 0 and summary.batches >= 1


def test_jsonl_output_for_summaries(tmp_path, input_file):
    config = JobConfig(
        input=str(input_file),
        output=str(tmp_path / "out"),
        task="summarize",
        output_format="jsonl",
        run_id="r2",
        max_error_rate=0.4,  # two of LINES' five records are dead letters on purpose
    )
    summary = run(config)
    rows = [json.loads(line) for f in summary.result_files for line in Path(f).read_text().splitlines()]
    assert sorted((r["id"], r["summary"], r["finish_reason"]) for r in rows if r["id"] in "ab") == [
        ("a", "Great, I love", "stop"),
        ("b", "Awful and broken", "stop"),
    ]
    assert {r["task"] for r in rows} == {"summarize"} and len(rows) == 3
    assert next(r for r in rows if r["id"] == "a")["extra"] == {"stars": 5}  # an object again in JSONL


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match=r"--task classify: need at least two labels, e.g. --labels billing"):
        JobConfig(input="x", output="y", task="classify")
    with pytest.raises(ValueError, match=r"--task must be one of sentiment, classify, summarize, got 'translate'"):
        JobConfig(input="x", output="y", task="translate")
    with pytest.raises(ValueError) as err:
        JobConfig(input="", output="", max_new_tokens=0)
    assert "--input is required" in str(err.value) and "--max_new_tokens must be >= 1" in str(err.value)


def test_flags_reach_the_config():
    _, config = parse_args(
        ["--input", "in.jsonl", "--output", "out", "--task", "classify", "--labels", "a, b",
         "--no_calibration", "--model_copies", "0", "--runner", "DirectRunner", "--run_id", "fixed",
         "--engine_max_slots", "8"]
    )  # fmt: skip
    assert config.labels == ("a", "b") and config.calibrate is False and config.model_copies == 0
    assert config.run_id == "fixed" and config.output_format == "parquet"
    # The handler gets the model settings as declared, engine sizing included.
    assert ModelSettings.of(config).engine_kwargs() == {"max_slots": 8}


def test_invalid_flags_exit_with_a_message(capsys):
    assert main(["--input", "x", "--output", "y", "--task", "classify"]) == 2
    assert "--task classify: need at least two labels" in capsys.readouterr().err


def test_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.batch_inference", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flags = ["--input", "--output", "--task", "--labels", "--model", "--text_field", "--id_field"]
    flags += ["--output_format", "--max_new_tokens", "--prompt_style", "--batch_max_tokens"]
    flags += ["--max_prompt_tokens", "--on_overflow", "--max_record_bytes", "--model_copies", "--run_id"]
    for flag in flags:
        assert flag in out, flag
    assert "embedded" in out and "sentiment" in out
