"""The whole pipeline with --output_format bigquery (fake engine) against bqemulator."""

from __future__ import annotations

import datetime
import glob
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from pipelines.pipeline import build_pipeline
from tests.dataflow.conftest import PROJECT
from tests.transforms.fakes import fake_engine_factory, fake_resolver

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
RUN_DATE = datetime.date(2026, 11, 23)
LINES = [
    '{"id": "a", "text": "Great, I love it", "stars": 5}',
    '{"id": "b", "text": "Awful and broken"}',
    "{not json",
    '{"id": "c", "text": "POISON"}',
]


def run_job(emulators, tmp_path, dataset: str, lines=tuple(LINES), **overrides) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    overrides.setdefault("max_error_rate", 1.0)  # half of LINES are dead letters on purpose
    config = JobConfig(
        input=str(source),
        output=str(tmp_path / "out"),
        output_format="bigquery",
        output_table=f"{PROJECT}:{dataset}.sentiment",
        run_date=RUN_DATE,
        run_id="run-1",
        **overrides,
    )
    options = PipelineOptions([f"--project={PROJECT}", f"--temp_location={emulators.temp_location}"])
    pipeline = beam.Pipeline(runner=RUNNER, options=options)
    handler = GemmaModelHandler(
        ModelSettings(model_copies=0), engine_factory=fake_engine_factory, model_resolver=fake_resolver
    )
    build_pipeline(pipeline, config, handler=handler, progress=False)
    pipeline.run().wait_until_finish()


def rows_of(client, sql: str) -> list[tuple]:
    return [tuple(row.values()) for row in client.query(sql).result()]


def test_results_and_dead_letters_land_in_bigquery_and_a_rerun_replaces_them(emulators, undecorated, tmp_path):
    emulators.client.create_dataset("job")
    for attempt in range(2):  # the same run twice: the partition is replaced, not appended to
        run_job(emulators, tmp_path, "job")
        results = rows_of(emulators.client, "SELECT id, label, run_id, run_date FROM job.sentiment ORDER BY id")
        assert results == [("a", "positive", "run-1", RUN_DATE), ("b", "negative", "run-1", RUN_DATE)], attempt
        errors = rows_of(emulators.client, "SELECT id, stage FROM job.sentiment_errors ORDER BY stage")
        assert errors == [("c", "inference"), (None, "read")], attempt
    # A clean rerun of the date has no dead letters: the partition's old ones go (Beam loads nothing then).
    run_job(emulators, tmp_path, "job", lines=LINES[:2])
    assert rows_of(emulators.client, "SELECT id FROM job.sentiment ORDER BY id") == [("a",), ("b",)]
    tables = {t.table_id for t in emulators.client.list_tables("job")}
    assert "sentiment_errors" not in tables or not rows_of(emulators.client, "SELECT id FROM job.sentiment_errors")
    run_job(emulators, tmp_path, "job")  # restore the first run's files for the checks below
    # Dead letters are also files in --output, and no results-* files are written for a BigQuery job.
    files = glob.glob(str(tmp_path / "out" / "errors-*.jsonl"))
    letters = [json.loads(line) for f in files for line in Path(f).read_text().splitlines()]
    assert sorted(e["stage"] for e in letters) == ["inference", "read"]
    assert not glob.glob(str(tmp_path / "out" / "results-*"))


def test_a_run_over_the_error_limit_loads_neither_results_nor_dead_letters(emulators, undecorated, tmp_path):
    emulators.client.create_dataset("limited")
    with pytest.raises(Exception, match=r"error rate 2/4 = 0\.5000 is over --max_error_rate=0\.25"):
        run_job(emulators, tmp_path, "limited", max_error_rate=0.25)
    tables = [t.table_id for t in emulators.client.list_tables("limited")]
    # Neither load ran: the date's results and its dead letters still describe the same (earlier) run.
    assert "sentiment" not in tables and "sentiment_errors" not in tables


def test_bigquery_flags_are_validated():
    with pytest.raises(ValueError, match=r"needs --output_table PROJECT:DATASET\.TABLE"):
        JobConfig(input="in.jsonl", output="out", output_format="bigquery")
    with pytest.raises(ValueError, match=r"is not PROJECT:DATASET\.TABLE"):
        JobConfig(input="in.jsonl", output="out", output_format="bigquery", output_table="just-a-table")
    with pytest.raises(ValueError, match="--output_table goes with --output_format bigquery"):
        JobConfig(input="in.jsonl", output="out", output_table="p:d.t")


def upstream_steps(pipeline: beam.Pipeline, composite: str) -> set[str]:
    """Full labels of every step the leaf steps under ``composite`` wait for (main and side inputs)."""
    from apache_beam.pipeline import PipelineVisitor

    producers, leaves = {}, []

    class Collect(PipelineVisitor):
        def visit_transform(self, node) -> None:
            producers.update({id(out): node for out in node.outputs.values()})
            if node.full_label.startswith(composite + "/"):
                leaves.append(node)

    pipeline.visit(Collect())
    seen: set[str] = set()
    stack = list(leaves)
    while stack:
        node = stack.pop()
        for pcoll in [*node.inputs, *(side.pvalue for side in node.side_inputs)]:
            producer = producers.get(id(pcoll))
            if producer is not None and producer.full_label not in seen:
                seen.add(producer.full_label)
                stack.append(producer)
    return seen


def test_both_bigquery_loads_wait_for_the_accounting_check(tmp_path):
    """Whatever order a runner picks, neither partition is replaced before the error rate is known to pass."""
    (tmp_path / "in.jsonl").write_text(LINES[0] + "\n")
    config = JobConfig(
        input=str(tmp_path / "in.jsonl"),
        output=str(tmp_path / "out"),
        output_format="bigquery",
        output_table=f"{PROJECT}:ds.sentiment",
        run_date=RUN_DATE,
    )
    pipeline = beam.Pipeline(runner=RUNNER, options=PipelineOptions([f"--project={PROJECT}"]))
    handler = GemmaModelHandler(ModelSettings(model_copies=0), engine_factory=fake_engine_factory)
    build_pipeline(pipeline, config, handler=handler, progress=False)
    for load in ("LoadResults", "LoadErrors"):
        assert "Accounting/Check" in upstream_steps(pipeline, load), load
