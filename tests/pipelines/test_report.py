"""The run report: written when a run publishes (never when it fails), figures checked by hand against the
fake engine's cue-word scores, made again from the folder alone (local and gs://), and a report that cannot
be made never fails a published run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common.quality import expected_calibration_error, fit_temperature, rescaled
from pipelines import report as report_module
from pipelines.batch_inference import main
from pipelines.options import JobConfig
from pipelines.publish import PUBLISHED
from pipelines.report import __main__ as report_cli
from pipelines.report import read_figures, write_report
from pipelines.report.page import highlight
from tests.reliability.jobs import FN_API, run_job

# (id, text, gold label): the fake engine scores a label by its cue words (great/love, broken/awful, hours).
RECORDS = [
    ("a", "Great service, I love it", "positive"),
    ("b", "Arrived broken, truly awful", "negative"),
    ("c", "What are your opening hours?", "neutral"),
    ("d", "Great idea but broken and awful", "positive"),  # wrong: two negative cues beat one
    ("e", "No cue words in here", "neutral"),  # wrong: a three-way tie goes to the first label, positive
    ("f", "I love the colour", None),  # no gold label: not scored
]
BAD_LINES = ["{not json", '{"id": "g", "txt": "no text field"}']


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    weights = [math.exp(x - top) for x in xs]
    return [w / sum(weights) for w in weights]


def write_input(path: Path) -> Path:
    lines = [json.dumps({"id": i, "text": t, **({"label": g} if g else {})}) for i, t, g in RECORDS]
    path.write_text("\n".join(lines + BAD_LINES) + "\n")
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    config = JobConfig(
        input=str(write_input(root / "in.jsonl")), output=str(root / "out"), run_id="rep", max_error_rate=0.5,
        gold_field="label", explain=True,
    )  # fmt: skip
    run_job(config)
    return root / "out"


def test_the_report_is_written_next_to_the_results(published):
    names = sorted(p.name for p in published.iterdir())
    assert names == [PUBLISHED, "errors-00000-of-00001.jsonl", "report.html", "report.json", *_results(published)]
    page = (published / "report.html").read_text()
    for section in ('id="counts"', 'id="task-sentiment"', 'id="throughput"', 'id="longest"', 'id="slowest"'):
        assert section in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count('<img src="data:image/png;base64,') == 5  # labels, confidence, reliability, coverage, speed


def _results(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("results-*"))


def test_figures_against_the_gold_labels_by_hand(published):
    figures = read_figures(str(published))
    assert (figures["run_id"], figures["rows"], figures["errors"]) == ("rep", 6, 2)
    assert figures["errors_by_stage"] == {"read": 1, "validate": 1}
    task = figures["tasks"]["sentiment"]
    assert task["label_counts"] == {"positive": 3, "negative": 2, "neutral": 1}
    quality = task["quality"]
    assert (quality["labelled"], quality["unlabelled"], quality["gold_field"]) == (5, 1, "label")
    assert quality["accuracy"] == pytest.approx(3 / 5)
    # positive: P 1/2 R 1/2; negative: P 1/2 R 1; neutral: P 1 R 1/2
    assert quality["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    confidence = [
        softmax([-3, -5, -5])[0],  # a: great + love
        softmax([-5, -3, -5])[1],  # b: broken + awful
        softmax([-5, -5, -4])[2],  # c: hours
        softmax([-4, -3, -5])[1],  # d
        1 / 3,  # e: a tie
    ]
    correct = [True, True, True, False, False]
    assert quality["ece"] == pytest.approx(expected_calibration_error(confidence, correct))
    probabilities = [
        softmax([-3, -5, -5]),
        softmax([-5, -3, -5]),
        softmax([-5, -5, -4]),
        softmax([-4, -3, -5]),
        [1 / 3] * 3,
    ]
    assert quality["fitted_temperature"] == fit_temperature(probabilities, [0, 1, 2, 0, 2])
    scaled = [rescaled(p, quality["fitted_temperature"]) for p in probabilities]
    assert quality["fitted_ece"] == pytest.approx(expected_calibration_error([max(p) for p in scaled], correct))
    at_half = next(c for c in quality["coverage"] if c["threshold"] == 0.5)
    assert at_half == {"threshold": 0.5, "coverage": pytest.approx(0.8), "answered": 4, "accuracy": 0.75}


def test_sample_rows_show_the_text_with_the_evidence_marked(published):
    page = (published / "report.html").read_text()
    drop = softmax([-3, -5, -5])[0] - softmax([-4, -5, -5])[0]
    marked = (
        f'<mark class="r1" title="drop {drop:.3f}">Great</mark> service, I '
        f'<mark class="r2" title="drop {drop:.3f}">love</mark> it'
    )
    assert marked in page


def test_highlight_escapes_and_marks_whole_words_first():
    evidence = [{"text": "it", "drop": 0.2}, {"text": "<b>", "drop": 0.1}, {"text": "absent", "drop": 0.05}]
    assert highlight("We waited, it was <b> bad", evidence) == (
        'We waited, <mark class="r1" title="drop 0.200">it</mark> was '
        '<mark class="r2" title="drop 0.100">&lt;b&gt;</mark> bad'
    )


def test_make_report_makes_the_same_figures_from_the_folder(published, capsys):
    before = read_figures(str(published))
    (published / "report.html").unlink()
    assert report_cli.main([str(published)]) == 0
    assert f"report:  {published}/report.html" in capsys.readouterr().out
    after = read_figures(str(published))
    assert {**after, "generated_at": None} == {**before, "generated_at": None}
    assert (published / "report.html").stat().st_size > 10_000


def test_make_report_on_a_folder_with_no_published_run_says_so(tmp_path, capsys):
    assert report_cli.main([str(tmp_path)]) == 2
    assert "holds no _PUBLISHED.json: no run has published there" in capsys.readouterr().err


def test_a_failed_run_gets_no_report(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(BAD_LINES) + "\n")
    out = tmp_path / "out"
    argv = ["--input", str(source), "--output", str(out), "--runner", FN_API, "--model_copies", "0"]
    assert main([*argv, "--run_id", "bad"]) == 1  # every record is a dead letter
    assert not (out / "report.html").exists() and not (out / PUBLISHED).exists()


def test_a_report_that_cannot_be_made_does_not_fail_the_published_run(tmp_path, monkeypatch, capsys):
    def broken(output):
        raise RuntimeError("chart library missing")

    monkeypatch.setattr(report_module, "write_report", broken)
    monkeypatch.setattr("pipelines.report.step.write_report", broken)
    config = JobConfig(input=str(write_input(tmp_path / "in.jsonl")), output=str(tmp_path / "out"), run_id="r",
                       max_error_rate=0.5)  # fmt: skip
    summary = run_job(config)
    assert summary.rows == 6 and (tmp_path / "out" / PUBLISHED).exists()
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Run r published its results, but its report could not be made: RuntimeError: chart library missing" in page
    assert read_figures(str(tmp_path / "out")) == {"run_id": "r", "error": "RuntimeError: chart library missing"}
    lines = report_module.summary_lines(str(tmp_path / "out"), "r")
    assert lines == [f"report:        none (RuntimeError: chart library missing); make report OUTPUT={tmp_path}/out "
                     "makes it"]  # fmt: skip


def test_the_cli_prints_where_the_report_is_and_the_quality(published, capsys):
    """The CLI on the embedded model prints the report's place and its quality figures (what the model gets right
    on these five rows depends on its rounding, so the figures are read from the run's own report.json; the
    fake-engine tests above check them by hand)."""
    out = published.parent / "cli"
    argv = ["--input", str(published.parent / "in.jsonl"), "--output", str(out), "--runner", FN_API]
    assert main([*argv, "--model_copies", "0", "--gold_field", "label", "--max_error_rate", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert f"report:        {out}/report.html" in printed
    quality = read_figures(str(out))["tasks"]["sentiment"]["quality"]
    assert quality["labelled"] == 5
    line = (f"quality:       sentiment vs label (n=5): accuracy {quality['accuracy']:.3f}, "
            f"macro-F1 {quality['macro_f1']:.3f}, ECE {quality['ece']:.3f}")  # fmt: skip
    assert line in printed


def test_the_report_of_a_gs_output(gcs, tmp_path):
    gcs.create_bucket("reports")
    config = JobConfig(input=str(write_input(tmp_path / "in.jsonl")), output="gs://reports/run1", run_id="g",
                       max_error_rate=0.5, gold_field="label")  # fmt: skip
    run_job(config)
    blob = gcs.bucket("reports").get_blob("run1/report.html")
    assert blob is not None and blob.content_type == "text/html"  # a browser opening it from the bucket renders it
    assert read_figures("gs://reports/run1")["tasks"]["sentiment"]["quality"]["labelled"] == 5
    blob.delete()
    page, _ = write_report("gs://reports/run1")  # make report OUTPUT=gs://...
    assert page == "gs://reports/run1/report.html" and gcs.bucket("reports").blob("run1/report.html").exists()


TASK_FILE = """
tasks:
  - name: tone
    kind: classify
    labels: [positive, negative]
    explain: {top_k: 1}
    gold: tone_gold
    min_confidence: 0.7
  - name: topic
    kind: classify
    labels: [billing, shipping]
    multi_label: true
    threshold: 0.6
  - name: note
    kind: generate
    prompt: "Note:"
    max_new_tokens: 8
"""


def test_a_task_files_report_has_a_section_per_task(tmp_path):
    (tmp_path / "tasks.yaml").write_text(TASK_FILE)
    lines = [
        {"id": "1", "text": "Great billing, I love it", "tone_gold": "positive"},
        {"id": "2", "text": "Broken shipping", "tone_gold": "Negative"},  # gold labels match case-blind
        {"id": "3", "text": "Awful billing", "tone_gold": "unsure"},  # not a label: counted wrong
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = JobConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out"), run_id="tf",
                       task_file=str(tmp_path / "tasks.yaml"))  # fmt: skip
    run_job(config)
    tasks = read_figures(str(tmp_path / "out"))["tasks"]
    assert {name: task["kind"] for name, task in tasks.items()} == {
        "tone": "classify", "topic": "classify", "note": "generate"
    }  # fmt: skip
    tone = tasks["tone"]["quality"]
    assert (tone["labelled"], tone["outside_labels"], tone["accuracy"]) == (3, 1, pytest.approx(2 / 3))
    # Confidence: 0.88 for row 1 (two cue words), e / (1 + e) = 0.73 for the others (one): all above 0.7.
    assert next(c for c in tone["coverage"] if c["threshold"] == 0.7) == {
        "threshold": 0.7, "coverage": 1.0, "answered": 3, "accuracy": pytest.approx(2 / 3)
    }  # fmt: skip
    assert "quality" not in tasks["topic"] and "quality" not in tasks["note"]
    assert tasks["topic"]["label_counts"] == {"billing": 2, "shipping": 1}  # yes at 0.73, no at 0.5
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="task-tone"' in page and 'id="task-topic"' in page and 'id="task-note"' in page
    assert '<mark class="r1"' in page and "tone evidence: " in page  # tone explains, with top_k 1


def test_run_info_reads_back_and_skips_keys_it_does_not_know():
    from pipelines.run_info import RunInfo
    from transforms.registry import shortcut

    config = JobConfig(input="in.jsonl", output="out", run_id="x", gold_field="label", explain=True)
    info = RunInfo.of(config, shortcut("sentiment", gold_field="label", explain=True))
    raw = json.loads(json.dumps(info.to_dict()))  # as _PUBLISHED.json holds it
    assert RunInfo.from_dict(raw) == info
    (task,) = info.tasks
    assert (task.prefix, task.labels, task.gold_field, task.explain) == ("", ("positive", "negative", "neutral"),
                                                                        "label", True)  # fmt: skip
    newer = {**raw, "shards": 4, "tasks": [{**raw["tasks"][0], "color": "red"}]}
    assert RunInfo.from_dict(newer) == info
