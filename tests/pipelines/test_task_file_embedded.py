"""A two-task file (classify + generate) over sample.jsonl on the embedded Gemma 3 270M: one row per record with
both tasks' typed columns, and each record's trunk read by the model exactly once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inference.handler import GemmaModelHandler, build_engine
from inference.prompts import PromptEncoder
from inference.settings import ModelSettings
from pipelines.io import RecordSpec
from pipelines.options import JobConfig
from pipelines.plan import read_sample
from tests.reliability.jobs import run_job
from transforms.registry import make_task_set

SAMPLE = Path(__file__).resolve().parents[2] / "sample.jsonl"
pytestmark = pytest.mark.embedded
TASKS = """
tasks:
  - name: mood
    kind: classify
    calibrate: false
    labels: [positive, negative]
  - name: note
    kind: generate
    prompt: "Note for the {source} team:"
    max_new_tokens: 6
"""
ENGINES: list = []  # the engine the in-process runner loaded, for its counter


def recording_factory(path, **kwargs):
    engine = build_engine(path, **kwargs)
    ENGINES.append(engine)
    return engine


def expected_tokens_fed(config: JobConfig, engine) -> tuple[int, int]:
    """(tokens the model reads when each trunk is read once, tokens when every question reads it again)."""
    tasks = make_task_set(config)
    (template,) = tasks.templates
    prompts = PromptEncoder(engine.tokenizer, engine.max_context, "completion")
    shared = alone = len(prompts.head(template))  # the template head, computed once and kept
    for record in read_sample(config.input, RecordSpec.of(config), 100).records:
        encoded = prompts.encode(tasks.build_request(record).fields, template)
        record_tokens = len(encoded.trunk) - len(encoded.head)
        shared += record_tokens
        for q, tail in enumerate(encoded.tails):
            candidates = prompts.candidate_ids(template, q) if template.questions[q].scored else []
            branch = len(tail) + sum(len(ids) - 1 for ids in candidates)  # the tail once, then each candidate
            shared += branch
            alone += record_tokens + branch
    return shared, alone


def test_two_tasks_one_row_and_one_read_of_each_record(tmp_path):
    task_file = tmp_path / "tasks.yaml"
    task_file.write_text(TASKS)
    config = JobConfig(
        input=str(SAMPLE),
        output=str(tmp_path / "out"),
        task_file=str(task_file),
        run_id="tf",
        num_shards=1,
        prompt_style="completion",
        dtype="float32",
        model_copies=0,
    )
    handler = GemmaModelHandler(ModelSettings.of(config), engine_factory=recording_factory)
    ENGINES.clear()
    run_job(config, handler)

    table = pq.read_table(str(tmp_path / "out" / "results-00000-of-00001.parquet"))
    assert table.num_rows == 24
    types = {name: table.schema.field(name).type for name in table.schema.names}
    assert types["mood_label"] == pa.string() and types["mood_confidence"] == pa.float64()
    assert types["mood_label_scores"] == pa.map_(pa.string(), pa.float64())
    assert types["note_text"] == pa.string() and types["note_finish_reason"] == pa.string()
    rows = table.to_pylist()
    assert {r["mood_label"] for r in rows} <= {"positive", "negative"}
    assert all(r["note_finish_reason"] in ("stop", "length") for r in rows)
    assert all(r["output_tokens"] <= 6 for r in rows)

    (engine,) = ENGINES
    shared, alone = expected_tokens_fed(config, engine)
    assert engine.tokens_fed == shared < alone
