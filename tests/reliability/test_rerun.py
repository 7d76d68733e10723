"""Reruns are idempotent: the same job twice gives the same files and rows; another shard count leaves no
stale files; a publish cut short and retried ends in the same state; two runs publishing into one folder
never mix; a staging folder that cannot be listed is an error."""

from __future__ import annotations

import json
import threading

import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from pipelines import output_lock
from pipelines.options import JobConfig
from pipelines.publish import MANIFEST, PUBLISHED, NothingToPublish, publish, staging_dir
from tests.matchers import untimed
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
    by_id = lambda rows: sorted(rows, key=lambda r: r["id"])  # noqa: E731
    assert untimed(by_id(result_rows(second))) == untimed(by_id(rows_first))
    assert len(rows_first) == 7 and second.result_files == first.result_files
    suffix = "parquet" if output_format == "parquet" else "jsonl"
    assert sorted(files_first) == [
        PUBLISHED,
        "errors-00000-of-00002.jsonl",
        "errors-00001-of-00002.jsonl",
        "report.html",
        "report.json",
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
    assert sorted(snapshot(out)) == [
        "README.txt",
        PUBLISHED,
        "errors-00000-of-00001.jsonl",
        "report.html",
        "report.json",
        "results-00000-of-00001.parquet",
    ]
    assert json.loads((out / PUBLISHED).read_text())["run_id"] == "b"
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
    published = publish(str(out), str(staging), "run2")
    assert sorted(p.rsplit("/", 1)[-1] for p in published) == sorted(new)
    record = {PUBLISHED: json.dumps({"run_id": "run2", "files": sorted(new)}).encode()}
    assert snapshot(out) == {**{name: text.encode() for name, text in new.items()}, **record}
    assert publish(str(out), str(staging), "run2") == published  # a second retry: same state, nothing lost
    assert snapshot(out) == {**{name: text.encode() for name, text in new.items()}, **record}
    with pytest.raises(NothingToPublish, match="was not published by run run3"):
        publish(str(out), str(tmp_path / "out" / ".staging-run3"), "run3")  # empty staging, not its publish
    assert snapshot(out) == {**{name: text.encode() for name, text in new.items()}, **record}


def test_staging_dir_is_run_scoped_and_safe():
    assert staging_dir("gs://b/out/", "2024 01/x") == "gs://b/out/.staging-2024_01_x"


def stage(out, run_id: str, names: list[str]):
    staging = out / f".staging-{run_id}"
    staging.mkdir(parents=True)
    for name in names:
        (staging / name).write_text(f"{run_id} {name}")
    return staging


def test_a_staging_folder_that_cannot_be_listed_fails_the_publish(tmp_path, monkeypatch):
    """Listing errors used to read as "nothing staged", i.e. "already published": the run ended green."""
    out = tmp_path / "out"
    staging = stage(out, "r", ["results-00000-of-00001.parquet", "errors-00000-of-00001.jsonl"])
    (out / "results-00000-of-00001.parquet").write_text("yesterday")
    real_match = FileSystems.match

    def failing_match(patterns, limits=None):
        if any(".staging-r" in p for p in patterns):
            raise BeamIOError("Match operation failed", {patterns[0]: OSError("permission denied")})
        return real_match(patterns, limits)

    monkeypatch.setattr(FileSystems, "match", failing_match)
    with pytest.raises(BeamIOError, match="Match operation failed"):
        publish(str(out), str(staging), "r")
    assert (out / "results-00000-of-00001.parquet").read_text() == "yesterday"
    assert not (out / PUBLISHED).exists()


def test_two_runs_publishing_into_one_folder_never_mix(tmp_path, monkeypatch):
    """Run a is paused after moving its first file; run b's publish must wait, then replace a's files whole."""
    monkeypatch.setattr(output_lock, "POLL_SECONDS", 0.02)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results-00000-of-00001.parquet").write_text("yesterday")
    a_names = [f"results-0000{i}-of-00003.parquet" for i in range(3)] + ["errors-00000-of-00001.jsonl"]
    b_names = ["results-00000-of-00002.parquet", "results-00001-of-00002.parquet", "errors-00000-of-00001.jsonl"]
    a_staging, b_staging = stage(out, "a", a_names), stage(out, "b", b_names)
    a_moved_one, a_may_go_on = threading.Event(), threading.Event()
    real_rename = FileSystems.rename

    def pausing_rename(sources, targets):
        real_rename(sources, targets)
        if ".staging-a" in sources[0] and not a_moved_one.is_set():
            a_moved_one.set()
            assert a_may_go_on.wait(10)

    monkeypatch.setattr(FileSystems, "rename", pausing_rename)
    results: dict[str, object] = {}

    def run(run_id, staging):
        try:
            results[run_id] = publish(str(out), str(staging), run_id)
        except Exception as err:  # the assertion below names it
            results[run_id] = err

    a = threading.Thread(target=run, args=("a", a_staging))
    a.start()
    assert a_moved_one.wait(10)
    b = threading.Thread(target=run, args=("b", b_staging))
    b.start()
    b.join(0.5)
    assert b.is_alive()  # b waits for a's turn to end ...
    first = sorted(a_names)[0]
    assert (out / first).read_text() == f"a {first}"  # ... and deleted nothing of a's meanwhile
    a_may_go_on.set()
    a.join(10)
    b.join(10)
    assert isinstance(results["a"], list) and isinstance(results["b"], list), results
    files = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    assert files == {
        **{name: f"b {name}" for name in b_names},
        PUBLISHED: json.dumps({"run_id": "b", "files": sorted(b_names)}),
    }
    assert not a_staging.exists() and not b_staging.exists()
    assert not list(out.glob(output_lock.LOCK_PREFIX + "*"))


def test_a_publish_marker_left_by_a_dead_run_is_ignored_after_a_while(tmp_path, monkeypatch):
    monkeypatch.setattr(output_lock, "WAIT_SECONDS", 0.1)
    monkeypatch.setattr(output_lock, "POLL_SECONDS", 0.02)
    out = tmp_path / "out"
    staging = stage(out, "new", ["errors-00000-of-00001.jsonl"])
    (out / f"{output_lock.LOCK_PREFIX}dead").write_text("{}")
    with pytest.raises(output_lock.OutputBusy, match=r"being published by another run .*_PUBLISHING-dead"):
        publish(str(out), str(staging), "new")
    monkeypatch.setattr(output_lock, "ABANDONED_AFTER_SECONDS", 0.0)
    assert publish(str(out), str(staging), "new") == [str(out / "errors-00000-of-00001.jsonl")]
