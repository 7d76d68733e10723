"""The Flex Template's task_file parameter: a gs:// task file (and its gs:// examples) read through the
template's own argument handling, then the whole job on the GCS emulator."""

from __future__ import annotations

import datetime
import importlib.util
import io
import json
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.batch_inference import parse_args
from tests.reliability.jobs import run_job

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
TASK_FILE = """
input_label: Ticket
tasks:
  - name: topic
    kind: classify
    calibrate: false
    labels: [refund, hours]
    examples: gs://cfg/topic_examples.jsonl
  - name: note
    kind: generate
    prompt: "Note for the {channel} desk:"
    max_new_tokens: 4
"""


def load_entry_module():
    spec = importlib.util.spec_from_file_location("flex_template_main_tf", TEMPLATES / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_template_runs_a_gs_task_file(gcs):
    cfg, inputs, _ = gcs.create_bucket("cfg"), gcs.create_bucket("in"), gcs.create_bucket("out")
    cfg.blob("tasks.yaml").upload_from_string(TASK_FILE)
    cfg.blob("topic_examples.jsonl").upload_from_string(json.dumps({"text": "money back", "label": "refund"}) + "\n")
    lines = [
        {"id": "a", "text": "refund refund now", "channel": "email"},
        {"id": "b", "text": "hours?", "channel": "chat"},
    ]
    inputs.blob("2026-11-23/t.jsonl").upload_from_string("".join(json.dumps(x) + "\n" for x in lines))

    entry = load_entry_module()
    bools, takes_run_date = entry.pipeline_flags()
    argv = entry.expand_launch_args(
        ["--input=gs://in/{run_date}/*.jsonl", "--output=gs://out/run", "--task_file=gs://cfg/tasks.yaml",
         "--run_id=tf", "--num_shards=1", "--run_date_offset_days=-1"],
        bools, takes_run_date, datetime.date(2026, 11, 24),
    )  # fmt: skip
    _, config = parse_args(argv)
    assert config.task_file == "gs://cfg/tasks.yaml" and config.input == "gs://in/2026-11-23/*.jsonl"
    summary = run_job(config)

    table = pq.read_table(io.BytesIO(gcs.bucket("out").blob("run/results-00000-of-00001.parquet").download_as_bytes()))
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [(r["id"], r["topic_label"]) for r in rows] == [("a", "refund"), ("b", "hours")]
    assert [r["note_finish_reason"] for r in rows] == ["stop", "stop"]
    assert "task" not in table.schema.names and (summary.rows, summary.errors) == (2, 0)


def test_metadata_declares_the_task_file_parameter():
    params = {p["name"]: p for p in json.loads((TEMPLATES / "metadata.json").read_text())["parameters"]}
    assert params["task_file"]["isOptional"] is True
    assert params["task_file"]["regexes"] == [r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+$"]
