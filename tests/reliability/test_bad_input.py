"""Bad input cases not covered by tests/pipelines/test_io.py and test_accounting.py: non-object JSON of every
kind, oversized records and prompts under both --on_overflow policies, and broken or odd Parquet files."""

from __future__ import annotations

import functools
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

import pipelines.pipeline
from common.records import DeadLetter, Record
from inference.handler import GemmaModelHandler
from inference.requests import Answer, RecordResponse
from pipelines.io import ReadRecords, RecordSpec, cut_utf8, error_json, parse_line
from pipelines.options import JobConfig
from tests.reliability.jobs import error_rows, result_rows, run_job
from tests.transforms.fakes import fake_engine_factory, fake_resolver
from transforms.registry import shortcut

FN_API = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b'"just a string"', "str"), (b"42", "int"), (b"4.5", "float"), (b"null", "NoneType"), (b"true", "bool")],
)
def test_every_non_object_json_value_is_a_validate_dead_letter(raw, kind):
    letter = parse_line(raw, RecordSpec())
    assert letter == DeadLetter(None, "validate", f"expected a JSON object, got {kind}", raw.decode())


def test_float_and_negative_ids_become_strings():
    assert parse_line(b'{"id": 1.5, "text": "a"}', RecordSpec()).id == "1.5"
    assert parse_line(b'{"id": -3, "text": "a"}', RecordSpec()).id == "-3"


def test_an_oversized_line_is_cut_on_a_character_boundary_under_truncate():
    raw = json.dumps({"id": "big", "text": "é" * 300, "lang": "fr"}, ensure_ascii=False).encode()
    spec = RecordSpec(max_record_bytes=101, on_overflow="truncate")
    record = parse_line(raw, spec)
    assert isinstance(record, Record) and record.truncated is True
    assert record.text == "é" * 50 and record.extra == {"lang": "fr"} and record.id == "big"  # 101 bytes: 50 chars
    small = parse_line(b'{"id": "s", "text": "short"}', spec)
    assert small.truncated is False and small.text == "short"


def test_an_oversized_line_whose_text_fits_is_kept_whole():
    raw = json.dumps({"id": "x", "text": "fits", "blob": "z" * 500}).encode()
    record = parse_line(raw, RecordSpec(max_record_bytes=100, on_overflow="truncate"))
    assert (record.text, record.truncated, len(record.extra["blob"])) == ("fits", False, 500)


def test_cut_utf8():
    assert cut_utf8("aé€😀", 1) == "a" and cut_utf8("aé€😀", 2) == "a" and cut_utf8("aé€😀", 3) == "aé"
    assert cut_utf8("aé€😀", 6) == "aé€" and cut_utf8("aé€😀", 10) == "aé€😀"


def test_record_spec_refuses_unknown_policies():
    with pytest.raises(ValueError, match="on_overflow must be 'truncate' or 'error', got 'drop'"):
        RecordSpec(on_overflow="drop")


def test_a_truncated_record_sets_the_truncated_column():
    response = RecordResponse((Answer((-4.0, -5.0, -5.0)),), 12, False, "completion", "m")
    row = shortcut("sentiment").to_row(Record("t", "great", truncated=True), response, "run", "fp")
    assert (row["truncated"], row["label"], row["prompt_tokens"]) == (True, "positive", 12)
    assert shortcut("sentiment").to_row(Record("t", "great"), response, "run", "fp")["truncated"] is False


def _check_parquet(tmp_path, spec: RecordSpec, records: list[tuple], errors: list[tuple]) -> None:
    """ReadRecords over every *.parquet in tmp_path gives these (id, text, truncated, extra) records and
    these (stage, id, error without the file name) dead letters."""
    with BeamPipeline(runner=FN_API) as p:
        got, letters = p | ReadRecords(str(tmp_path / "*.parquet"), spec)
        rows = got | beam.Map(lambda r: (r.id, r.text, r.truncated, r.extra))
        assert_that(rows, equal_to(records), label="records")
        without_path = letters | beam.Map(lambda e: (e.stage, e.id, e.error.split(" (in ")[0]))
        assert_that(without_path, equal_to(errors), label="errors")


def test_parquet_rows_with_odd_values(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 2], pa.int64()),  # numeric ids, one duplicate
            "text": ["fine\r\n", None, "   ", "a\x00b\u200bc", "dup"],
            "when": pa.array([0, 1, 2, 3, 4], pa.timestamp("s")),
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    when = table.column("when").to_pylist()  # extra columns pass through
    _check_parquet(
        tmp_path,
        RecordSpec(),
        records=[
            ("1", "fine", False, {"when": when[0]}),
            ("2", "dup", False, {"when": when[4]}),
            ("4", "abc", False, {"when": when[3]}),
        ],
        errors=[
            ("validate", "2", "text field 'text' must be a string, got NoneType"),
            ("validate", "3", "text field 'text' is empty"),
        ],
    )


def test_parquet_text_column_of_the_wrong_type_dead_letters_each_row(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1, 2]}), tmp_path / "ints.parquet")
    _check_parquet(
        tmp_path,
        RecordSpec(),
        records=[],
        errors=[
            ("validate", "a", "text field 'text' must be a string, got int"),
            ("validate", "b", "text field 'text' must be a string, got int"),
        ],
    )


def test_a_parquet_file_cut_short_is_one_dead_letter(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), tmp_path / "whole.parquet")
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "whole.parquet").unlink()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])  # the footer is gone
    (tmp_path / "empty.parquet").write_bytes(b"")
    with BeamPipeline(runner=FN_API) as p:
        records, letters = p | ReadRecords(str(tmp_path / "*.parquet"), RecordSpec())
        assert_that(records, equal_to([]), label="records")
        assert_that(
            letters | beam.Map(lambda e: (e.stage, e.id, e.input.rsplit("/", 1)[-1], e.error.split(":")[0])),
            equal_to(
                [
                    ("read", None, "cut.parquet", "cannot read Parquet file"),
                    ("read", None, "empty.parquet", "cannot read Parquet file"),
                ]
            ),
            label="errors",
        )


@pytest.mark.parametrize("policy", ["error", "truncate"])
def test_oversized_parquet_rows_follow_the_policy(tmp_path, policy):
    pq.write_table(pa.table({"id": ["big", "ok"], "text": ["w" * 400, "small"]}), tmp_path / "t.parquet")
    spec = RecordSpec(max_record_bytes=200, on_overflow=policy)
    if policy == "error":
        size = len(json.dumps({"id": "big", "text": "w" * 400}))  # the row as JSON, as the dead letter shows it
        message = f"row is {size} bytes, over --max_record_bytes=200; raise the limit or pass --on_overflow truncate"
        letter = ("read", "big", message + " to keep its start")
        _check_parquet(tmp_path, spec, records=[("ok", "small", False, {})], errors=[letter])
    else:
        expected = [("big", "w" * 200, True, {}), ("ok", "small", False, {})]
        _check_parquet(tmp_path, spec, records=expected, errors=[])


@pytest.fixture
def fake_engine_flags(monkeypatch):
    """make_handler(config) builds the real handler from the job's flags, over the fake engine."""
    handler = functools.partial(GemmaModelHandler, engine_factory=fake_engine_factory, model_resolver=fake_resolver)
    monkeypatch.setattr(pipelines.pipeline, "GemmaModelHandler", handler)


@pytest.mark.parametrize("policy", ["truncate", "error"])
def test_max_prompt_tokens_truncates_or_dead_letters_by_flag(tmp_path, fake_engine_flags, policy):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "long", "text": "' + "great " * 300 + '"}\n{"id": "short", "text": "awful"}\n')
    config = JobConfig(
        input=str(source), output=str(tmp_path / "out"), run_id="p", max_prompt_tokens=1200, on_overflow=policy,
        model_copies=0, max_error_rate=1.0,
    )  # fmt: skip
    summary = run_job(config, pipelines.pipeline.make_handler(config))
    rows = {r["id"]: r for r in result_rows(summary)}
    assert rows["short"]["truncated"] is False and rows["short"]["label"] == "negative"
    if policy == "truncate":
        assert rows["long"]["truncated"] is True and rows["long"]["prompt_tokens"] == 1200
        assert rows["long"]["label"] == "positive" and error_rows(summary) == []
    else:
        assert "long" not in rows
        ((letter),) = error_rows(summary)
        assert (letter["id"], letter["stage"]) == ("long", "inference")
        assert letter["error"].startswith("prompt has ") and "over the limit of 1200" in letter["error"]


def test_lone_surrogate_escapes_in_id_or_extra_are_dead_letters_not_a_failed_write():
    letter = parse_line(rb'{"id": "a\ud800", "text": "hi"}', RecordSpec())
    assert (letter.stage, letter.id) == ("validate", "a\ud800")
    assert letter.error.startswith("id holds a lone surrogate '\\ud800'")
    assert json.loads(error_json(letter).encode("utf-8"))["id"] == "a\ud800"  # the errors file can hold it
    letter = parse_line(rb'{"id": "b", "text": "hi", "note": ["\udfff"]}', RecordSpec())
    assert (letter.stage, letter.id) == ("validate", "b") and letter.error.startswith("extra fields holds")
    assert parse_line(rb'{"id": "c", "text": "h\ud800i"}', RecordSpec()).text == "hi"  # stripped from the text


def test_non_finite_numbers_in_extra_fields_become_null_in_strict_json():
    record = parse_line(b'{"id": "n", "text": "hi", "a": NaN, "b": [Infinity, 1.5]}', RecordSpec())
    response = RecordResponse((Answer((-4.0, -5.0, -5.0)),), 3, False, "completion", "m")
    assert shortcut("sentiment").to_row(record, response, "r", "fp")["extra"] == '{"a": null, "b": [null, 1.5]}'
