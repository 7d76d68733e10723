"""--skip_done: a rerun over the same input skips records whose result is already there (same content, task
definition and model), carries their rows into the new output by default, and runs only the new ones."""

from __future__ import annotations

import json

import pytest

from pipelines.options import JobConfig
from tests.reliability.jobs import fake_handler, result_rows, run_job
from tests.transforms.fakes import FakeEngine
from transforms.classify import DEFAULT_CALIBRATION

SCORED: list[int] = []  # prompts per engine.score call; FnApiRunner runs the handler in this process


class CountingEngine(FakeEngine):
    def score(self, prompts, candidates, **kwargs):
        SCORED.append(len(prompts))
        return super().score(prompts, candidates, **kwargs)


def counting_factory(path, **kwargs) -> CountingEngine:
    return CountingEngine()


def write_records(path, ids, text="great review number {i}") -> None:
    path.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": text.format(i=i), "batch": i // 10}) + "\n" for i in ids)
    )


def run(source, out, run_id, **settings):
    SCORED.clear()
    config = JobConfig(input=str(source), output=str(out), run_id=run_id, calibrate=False, **settings)
    summary = run_job(config, fake_handler(counting_factory))
    return summary, sum(SCORED)


def test_a_rerun_with_10_new_records_runs_inference_for_exactly_10(tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_records(source, range(50))
    first, scored = run(source, out, "first")
    assert scored == 50 and first.skipped == 0
    keys = {r["id"]: r["result_key"] for r in result_rows(first)}
    write_records(source, range(60))  # the same 50 plus 10 new
    second, scored = run(source, out, "second", skip_done=str(out))
    assert scored == 10  # inference ran for the new records only
    assert second.skipped == 50 and second.rows == 10
    rows = {r["id"]: r for r in result_rows(second)}
    assert sorted(rows) == sorted(f"r{i}" for i in range(60))  # carried: the folder is complete on its own
    assert {rows[f"r{i}"]["run_id"] for i in range(50)} == {"first"}  # lineage: the run that computed it
    assert {rows[f"r{i}"]["run_id"] for i in range(50, 60)} == {"second"}
    assert {i: rows[i]["result_key"] for i in keys} == keys
    assert rows["r7"]["extra"] == '{"batch": 0}' and rows["r7"]["label"] == "positive"
    third, scored = run(source, out, "third", skip_done=str(out))  # nothing left to do
    assert scored == 0 and third.skipped == 60 and len(result_rows(third)) == 60


def test_dropped_skipped_rows_leave_only_the_new_work(tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_records(source, range(20))
    run(source, out, "first")
    write_records(source, range(25))
    summary, scored = run(source, tmp_path / "new", "second", skip_done=str(out), skipped_rows="drop")
    assert scored == 5 and summary.skipped == 20
    assert sorted(r["id"] for r in result_rows(summary)) == [f"r{i}" for i in range(20, 25)]


@pytest.mark.parametrize(
    ("change", "expected_runs"),
    [
        ({}, 0),
        ({"text": "awful review number {i}"}, 10),  # same ids, new content
        ({"calibrate": True}, 10),  # another task definition (calibration documents)
        ({"prompt_style": "chat"}, 10),  # another model-side setting that changes results
        ({"batch_max_tokens": 999, "engine_max_slots": 3}, 0),  # runtime-only: results are the same
    ],
)
def test_content_task_and_model_each_decide_what_is_done(tmp_path, change, expected_runs):
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_records(source, range(10))
    run(source, out, "first")
    change = dict(change)
    write_records(source, range(10), change.pop("text", "great review number {i}"))
    SCORED.clear()
    config = JobConfig(
        input=str(source), output=str(tmp_path / "again"), run_id="again", skip_done=str(out),
        **{"calibrate": False, **change},
    )  # fmt: skip
    summary = run_job(config, fake_handler(counting_factory))
    calibration = len(DEFAULT_CALIBRATION) if change.get("calibrate") and expected_runs else 0
    assert sum(SCORED) == expected_runs + calibration  # records run, plus the label prior scored once
    assert summary.skipped == 10 - expected_runs and summary.rows == expected_runs


def test_a_first_run_with_an_empty_skip_done_folder_runs_everything(tmp_path):
    source = tmp_path / "in.jsonl"
    write_records(source, range(5))
    summary, scored = run(source, tmp_path / "out", "first", skip_done=str(tmp_path / "nothing-yet"))
    assert scored == 5 and summary.skipped == 0 and len(result_rows(summary)) == 5


def test_skip_done_reads_a_gs_folder(gcs, tmp_path):
    gcs.create_bucket("out")
    source = tmp_path / "in.jsonl"
    write_records(source, range(8))
    run(source, "gs://out/run", "first", output_format="jsonl")
    write_records(source, range(10))
    summary, scored = run(source, "gs://out/run", "second", skip_done="gs://out/run", output_format="jsonl")
    assert scored == 2 and summary.skipped == 8
    lines = [
        json.loads(x) for b in gcs.list_blobs("out", prefix="run/results-") for x in b.download_as_text().splitlines()
    ]
    assert sorted(r["id"] for r in lines) == sorted(f"r{i}" for i in range(10))
    assert {r["run_id"] for r in lines if r["id"] in ("r8", "r9")} == {"second"}
