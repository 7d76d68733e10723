"""The CLI is safe by default: a failed run exits non-zero and keeps the previous output, and a run that cannot
work (no input, no model, a misspelled flag) is one line, exit 2, with nothing written."""

from __future__ import annotations

import json

import pytest

from common.errors import UserInputError
from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines import batch_inference
from pipelines import pipeline as pipeline_module
from pipelines.batch_inference import main, parse_args
from pipelines.failure_report import reason_of, top_reasons
from tests.transforms.fakes import fake_engine_factory, fake_resolver

RUNNER = ["--runner", "apache_beam.runners.portability.fn_api_runner.FnApiRunner"]


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    """The CLI builds its handler from the flags; here it gets the fake engine (no weights loaded)."""

    def make_handler(config):
        return GemmaModelHandler(
            ModelSettings.of(config), engine_factory=fake_engine_factory, model_resolver=fake_resolver
        )

    monkeypatch.setattr(pipeline_module, "make_handler", make_handler)


@pytest.fixture
def two_records(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "great"}\n{"id": "b", "text": "awful"}\n')
    return path


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_mistyped_text_field_fails_the_run_and_keeps_yesterday_s_output(two_records, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--input", str(two_records), "--output", str(out), "--run_id", "good", *RUNNER]) == 0
    before = snapshot(out)
    assert (
        main(["--input", str(two_records), "--output", str(out), "--text_field", "txt", "--run_id", "typo", *RUNNER])
        == 1
    )
    assert snapshot(out) == before  # the good results are still there, byte for byte
    report = capsys.readouterr().err.splitlines()
    assert report[-6:] == [
        "run typo FAILED: error rate 2/2 = 1.0000 is over --max_error_rate=0.1",
        "nothing was published: the previous output is untouched",
        "top error reasons (of 2 dead letters):",
        "         2  validate: missing text field 'txt' (fields: ['id', 'text']); pass --text_field to pick one",
        f"this run's dead letters: {out}/.staging-typo/errors-*.jsonl",
        "fix the input (or --text_field / --id_field), or pass --max_error_rate 1 to publish anyway",
    ]
    staged = (out / ".staging-typo" / "errors-00000-of-00001.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in staged) == ["a", "b"]  # inspectable


def test_max_error_rate_1_opts_out(two_records, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            ["--input", str(two_records), "--output", str(out), "--text_field", "txt", "--max_error_rate", "1", *RUNNER]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "_PUBLISHED.json",
        "errors-00000-of-00001.jsonl",
        "report.html",
        "report.json",
        "results-00000-of-00001.parquet",
    ]


def test_input_that_matches_nothing_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path / "missing-*.jsonl"), "--output", str(out), *RUNNER]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --input {tmp_path}/missing-*.jsonl matches no files; check the path (quote globs such as "
        "'data/*.jsonl' so the shell passes them through)"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: d / "nowhere",
            "is neither 'embedded', a checkpoint folder, a .gguf file nor a gs:// folder",
        ),
        (lambda d: (d / "empty").mkdir() or d / "empty", "folder has no config.json (expected an HF checkpoint)"),
        (lambda d: (d / "m.gguf").write_bytes(b"PK\x03\x04") and d / "m.gguf", "not a GGUF file"),
    ],
)
def test_a_model_that_cannot_be_loaded_is_one_line_exit_2(two_records, tmp_path, capsys, make, message):
    model = make(tmp_path)
    out = tmp_path / "out"
    assert main(["--input", str(two_records), "--output", str(out), "--model", str(model), *RUNNER]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model") and message in err[0]
    assert not out.exists()


def test_a_gs_model_is_checked_by_its_listing(gcs, two_records, tmp_path, capsys):
    gcs.create_bucket("models")
    gcs.bucket("models").blob("gemma/README.md").upload_from_string("not a checkpoint")
    argv = ["--input", str(two_records), "--output", str(tmp_path / "out"), *RUNNER]
    assert main([*argv, "--model", "gs://models/gemma"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --model gs://models/gemma: expected config.json and *.safetensors directly in the folder, "
        "found ['README.md']"
    ]
    assert main([*argv, "--model", "gs://models/other"]) == 2
    assert "no objects under this prefix" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_misspelled_flags_are_named_with_the_closest_known_flag(two_records, tmp_path, capsys):
    argv = ["--input", str(two_records), "--output", str(tmp_path / "out"), *RUNNER]
    assert main([*argv, "--max_eror_rate", "0.1", "--labelz=a,b"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: unknown flag --max_eror_rate (did you mean --max_error_rate?); unknown flag --labelz (did you "
        "mean --label or --labels?); see --help for the job's flags (Beam's own flags are accepted too)"
    ]
    assert not (tmp_path / "out").exists()


def test_beam_s_own_flags_are_known_in_both_forms():
    argv = ["--input=i", "--output", "o", "--labels=a,b", "--task", "classify", "--label", "team=data"]
    argv += ["--project", "p", "--region=us-central1", "--temp_location", "gs://b/t", "--experiments=x"]
    argv += ["--sdk_container_image", "img", "--disk_size_gb=50", "--no_use_public_ips", "--max_num_workers", "3"]
    argv += ["--worker_machine_type", "g2-standard-8", "--direct_num_workers=2", "--save_main_session"]
    argv += ["--dataflow_service_options", "x", "--profile_cpu", "--type_check_strictness", "ALL_REQUIRED"]
    _, config = parse_args(argv)
    assert config.labels == ("a", "b") and config.input == "i"


def test_the_template_logs_unknown_flags_instead(caplog):
    _, config = parse_args(["--input", "i", "--output", "o", "--launcher_extra", "x"], strict=False)
    assert config.output == "o" and "unknown flag --launcher_extra" in caplog.text


def test_an_unreadable_task_file_is_one_line_and_exit_2(two_records, tmp_path, capsys):
    argv = ["--input", str(two_records), "--output", str(tmp_path / "out"), *RUNNER]
    assert main([*argv, "--task_file", str(tmp_path / "tasks.yaml")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: invalid options: {tmp_path}/tasks.yaml: cannot read the task file ([Errno 2] No such file or "
        f"directory: '{tmp_path}/tasks.yaml'); check the path and its permissions"
    ]
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - name: topic\n    kind: classify\n    labels: [a\n")
    assert main([*argv, "--task_file", str(tmp_path / "tasks.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: invalid options: {tmp_path}/tasks.yaml: not valid YAML")
    assert not (tmp_path / "out").exists()


def test_any_user_input_error_is_one_line_and_exit_2(two_records, tmp_path, monkeypatch, capsys):
    """The generic path (a task file that cannot be read, say): whatever raises it, the CLI prints one line."""

    def unreadable(config, tasks):
        raise UserInputError("task file tasks/review.yaml cannot be read:\n  line 3: bad indentation")

    monkeypatch.setattr(batch_inference, "preflight", unreadable)
    assert main(["--input", str(two_records), "--output", str(tmp_path / "out"), *RUNNER]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: task file tasks/review.yaml cannot be read: line 3: bad indentation"
    ]


def test_reasons_fold_per_record_numbers():
    letters = [{"stage": "read", "error": f"invalid UTF-8 at byte {n}"} for n in (3, 26, 26)]
    letters.append({"stage": "read", "error": "line is 3015 bytes, over --max_record_bytes=2000"})
    assert reason_of(letters[0]) == "read: invalid UTF-8 at byte N"
    assert top_reasons(letters) == (
        [("read: invalid UTF-8 at byte N", 3), ("read: line is N bytes, over --max_record_bytes=N", 1)],
        4,
    )
