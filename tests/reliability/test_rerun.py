"""Reruns are idempotent: the same job twice gives the same files and rows; another shard count leaves no
stale files; a publish cut short and retried ends in the same state."""

from __future__ import annotations

import json

import pytest

from pipelines.options import JobConfig
from pipelines.publish import MANIFEST, publish, staging_dir
from tests.reliability.jobs import result_rows, run_job

TEXTS = ["great", "awful broken", "hours?", "love it", "refund please", "excellent", "address change"]


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)) + "oops\n")
    return path


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("output_format", ["parquet", "jsonl"])
def test_same_job_twice_gives_the_same_files_and_rows(input_file, tmp_path, output_format):
    config = JobConfig(
        input=str(input_file),
        output=str(tmp_path / "out"),
        run_id="fixed",
        num_shards=2,
        output_format=output_format,
        max_error_rate=0.2,  # the "oops" line is a dead letter
    )
    first = run_job(config)
    files_first, rows_first = snapshot(tmp_path / "out"), result_rows(first)
    second = run_job(config)
    assert snapshot(tmp_path / "out").keys() == files_first.keys()
    assert sorted(result_rows(second), key=lambda r: r["id"]) == sorted(rows_first, key=lambda r: r["id"])
    assert len(rows_first) == 7 and second.result_files == first.result_files
    suffix = "parquet" if output_format == "parquet" else "jsonl"
    assert sorted(files_first) == [
        "errors-00000-of-00002.jsonl",
        "errors-00001-of-00002.jsonl",
        f"results-00000-of-00002.{suffix}",
        f"results-00001-of-00002.{suffix}",
    ]  # no staging folder, no beam-temp-* left


def test_a_rerun_with_fewer_shards_leaves_no_stale_files(input_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.txt").write_text("not the job's: kept")
    run_job(JobConfig(input=str(input_file), output=str(out), run_id="a", num_shards=3, max_error_rate=0.2))
    assert len(list(out.glob("results-*-of-00003.parquet"))) == 3
    summary = run_job(JobConfig(input=str(input_file), output=str(out), run_id="b", num_shards=1, max_error_rate=0.2))
    assert sorted(snapshot(out)) == ["README.txt", "errors-00000-of-00001.jsonl", "results-00000-of-00001.parquet"]
    rows = result_rows(summary)
    assert sorted(r["id"] for r in rows) == [f"r{i}" for i in range(7)] and {r["run_id"] for r in rows} == {"b"}


def test_publish_cut_short_and_retried_finishes_the_swap(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):
        (out / f"results-0000{i}-of-00003.parquet").write_text(f"old {i}")
    (out / "errors-00000-of-00001.jsonl").write_text("old errors")
    staging = tmp_path / "out" / ".staging-run2"
    staging.mkdir()
    new = {"results-00000-of-00002.parquet": "new 0", "results-00001-of-00002.parquet": "new 1"}
    new["errors-00000-of-00001.jsonl"] = "new errors"
    for name, text in new.items():
        (staging / name).write_text(text)
    assert staging_dir(str(out), "run2") == str(staging)
    # An attempt that wrote its manifest and moved one file, then died:
    (staging / MANIFEST).write_text(json.dumps({"files": sorted(new)}))
    (staging / "results-00000-of-00002.parquet").rename(out / "results-00000-of-00002.parquet")
    published = publish(str(out), str(staging))
    assert sorted(p.rsplit("/", 1)[-1] for p in published) == sorted(new)
    assert snapshot(out) == {name: text.encode() for name, text in new.items()}
    assert publish(str(out), str(staging)) == published  # a second retry: same state, nothing lost
    assert snapshot(out) == {name: text.encode() for name, text in new.items()}


def test_staging_dir_is_run_scoped_and_safe():
    assert staging_dir("gs://b/out/", "2024 01/x") == "gs://b/out/.staging-2024_01_x"
