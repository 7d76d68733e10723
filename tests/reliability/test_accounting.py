"""Every non-blank input line is a result or a dead letter, the summary and counters add up, and
--max_error_rate fails the job before anything is published."""

from __future__ import annotations

import json

import pytest

from pipelines.accounting import Accounting, ErrorRateExceeded, RecordsLost, check_accounting
from pipelines.batch_inference import parse_args
from pipelines.options import JobConfig
from tests.reliability.engines import CRASH, CrashingEngine
from tests.reliability.jobs import error_rows, fake_handler, result_rows, run_job

MESSY = [
    b'{"id": "ok1", "text": "great, I love it", "stars": 5}',
    b'{"id": "ok2", "text": "awful\\u0000 and broken"}\r',  # CRLF, a control character
    b"",
    b"   ",
    b"{not json",
    b'{"id": "tg", "text": "x"} trailing garbage',
    b"[1, 2, 3]",
    b'{"id": "nt"}',
    b'{"id": "num", "text": 42}',
    b'{"id": "ws", "text": " \\t "}',
    b'{"id": "utf", "text": "caf\xe9"}',
    b'{"id": "big", "text": "' + b"y" * 3000 + b'"}',
    b'{"id": "po", "text": "POISON"}',
    b'{"id": "cr", "text": "' + CRASH.encode() + b'"}',
    b'{"id": 7, "text": "hours?"}',
    b'{"id": 7, "text": "hours again"}',  # duplicate id: both rows
    b'{"text": "no id, great"}',
]
NON_BLANK = len([x for x in MESSY if x.strip()])


def crashing(path, **kwargs):
    return CrashingEngine()


@pytest.fixture
def messy(tmp_path):
    path = tmp_path / "messy.jsonl"
    path.write_bytes(b"\n".join(MESSY) + b"\n")
    return path


def config(messy, out, **kw) -> JobConfig:
    # --on_overflow error: the oversized line is one of the dead letters being accounted for; two thirds of
    # MESSY are dead letters on purpose, so the limit is off unless a test sets one
    kw.setdefault("max_error_rate", 1.0)
    return JobConfig(input=str(messy), output=str(out), run_id="acct", max_record_bytes=2000, on_overflow="error", **kw)


def test_messy_input_adds_up_in_files_summary_and_counters(messy, tmp_path):
    summary = run_job(config(messy, tmp_path / "out"), fake_handler(crashing))
    rows, errors = result_rows(summary), error_rows(summary)
    hashed = [r["id"] for r in rows if r["id"] not in ("7", "ok1", "ok2")]  # "no id": a content hash
    assert sorted(r["id"] for r in rows if r["id"] not in hashed) == ["7", "7", "ok1", "ok2"]
    assert len(hashed) == 1 and len(hashed[0]) == 16
    assert sorted((e["stage"], e["id"]) for e in errors if e["id"]) == [
        ("inference", "cr"),
        ("inference", "po"),
        ("validate", "nt"),
        ("validate", "num"),
        ("validate", "ws"),
    ]
    assert sorted(e["error"].split(":")[0] for e in errors if e["stage"] == "read") == [
        "invalid UTF-8 at byte 26",
        f"line is {len(MESSY[11])} bytes, over --max_record_bytes=2000; raise the limit or pass --on_overflow "
        "truncate to keep its start",
        "malformed JSON",
        "malformed JSON",
    ]
    assert [e["error"] for e in errors if e["stage"] == "validate" and e["id"] is None] == [
        "expected a JSON object, got list"
    ]
    # in = results + errors: in the files, in the summary (Beam counters) and in the accounting check
    assert NON_BLANK == 15 == len(rows) + len(errors)
    assert (summary.input_lines, summary.rows, summary.errors) == (15, 5, 10)
    assert summary.errors_by_stage == {"read": 4, "validate": 4, "inference": 2}


def test_error_rate_over_the_limit_fails_the_job_and_keeps_the_previous_output(messy, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "g", "text": "great"}\n')
    out = tmp_path / "out"
    first = run_job(JobConfig(input=str(good), output=str(out), run_id="good", max_error_rate=0.0))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert [r["id"] for r in result_rows(first)] == ["g"]
    with pytest.raises(Exception, match=r"error rate 10/15 = 0\.6667 is over --max_error_rate=0\.5"):
        run_job(config(messy, out, max_error_rate=0.5), fake_handler(crashing))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    staged = list(out.glob(".staging-acct/errors-*.jsonl"))  # kept for inspection
    assert sum(len(p.read_text().splitlines()) for p in staged) == 10


def test_error_rate_at_the_limit_passes(messy, tmp_path):
    summary = run_job(config(messy, tmp_path / "out", max_error_rate=10 / 15), fake_handler(crashing))
    assert (summary.rows, summary.errors) == (5, 10)


def test_check_accounting_messages():
    assert check_accounting(Accounting(4, 3, 1), 1.0).error_rate == 0.25
    assert check_accounting(Accounting(4, 0, 4), 1.0).error_rate == 1.0  # 1 turns the limit off
    assert check_accounting(Accounting(0, 0, 0), 0.0).error_rate == 0.0  # empty input is not an error
    with pytest.raises(ErrorRateExceeded, match=r"2/4 = 0\.5000 is over --max_error_rate=0\.1.*not published"):
        check_accounting(Accounting(4, 2, 2), 0.1)
    with pytest.raises(RecordsLost, match="5 input records but 3 results \\+ 1 errors = 4"):
        check_accounting(Accounting(5, 3, 1), 1.0)


def test_max_error_rate_flag():
    _, parsed = parse_args(["--input", "i", "--output", "o", "--max_error_rate", "0.02"])
    assert parsed.max_error_rate == 0.02
    assert parse_args(["--input", "i", "--output", "o"])[1].max_error_rate == 0.1  # the default: 10%
    with pytest.raises(ValueError, match=r"--max_error_rate must be <= 1, got 2\.0"):
        JobConfig(input="i", output="o", max_error_rate=2.0)


def test_accounting_counts_the_same_on_jsonl_output(messy, tmp_path):
    summary = run_job(config(messy, tmp_path / "out", output_format="jsonl"), fake_handler(crashing))
    assert len(result_rows(summary)) + len(error_rows(summary)) == NON_BLANK
    assert json.loads(json.dumps(result_rows(summary)[0]))["run_id"] == "acct"
