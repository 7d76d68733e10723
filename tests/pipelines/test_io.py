"""Reading records: every line or row becomes a Record or a dead letter that says why."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from common.records import DeadLetter, Record
from pipelines.io import ReadRecords, RecordSpec, detect_format, parse_line, stable_id, to_record

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
SPEC = RecordSpec()


def test_valid_line_keeps_extra_fields_and_stringifies_numeric_ids():
    rec = parse_line(b'{"id": 7, "text": " Nice  app ", "stars": 4, "tags": ["a"]}\r', SPEC)
    assert rec == Record(
        "7",
        "Nice  app",
        {"stars": 4, "tags": ["a"]},
        '{"id": 7, "text": " Nice  app ", "stars": 4, "tags": ["a"]}',
    )


def test_blank_lines_are_not_records():
    assert parse_line(b"   \r", SPEC) is None
    assert parse_line(b"", SPEC) is None


def test_missing_id_gets_a_stable_content_hash():
    a = parse_line(b'{"text": "hello", "x": 1}', SPEC)
    b = parse_line(b'{"x": 1,  "text": "hello"}', SPEC)
    assert a.id == b.id == stable_id({"text": "hello", "x": 1})
    assert len(a.id) == 16 and a.id != parse_line(b'{"text": "hello", "x": 2}', SPEC).id


def test_control_characters_are_stripped_from_text():
    rec = parse_line(json.dumps({"id": "c", "text": "bad\u0000 char\u200b here\x1b"}).encode(), SPEC)
    assert rec.text == "bad char here"


@pytest.mark.parametrize(
    ("raw", "stage", "error", "known_id"),
    [
        (b"not json", "read", "malformed JSON: Expecting value: line 1 column 1 (char 0)", None),
        (
            b'{"id": 1, "text": "a"} trailing',
            "read",
            "malformed JSON: Extra data: line 1 column 24 (char 23)",
            None,
        ),
        (b"[1, 2]", "validate", "expected a JSON object, got list", None),
        (
            b'{"id": "m"}',
            "validate",
            "missing text field 'text' (fields: ['id']); pass --text_field to pick one",
            "m",
        ),
        (b'{"id": "n", "text": 5}', "validate", "text field 'text' must be a string, got int", "n"),
        (b'{"id": "e", "text": " \\t "}', "validate", "text field 'text' is empty", "e"),
        (
            b'{"id": {"a": 1}, "text": "x"}',
            "validate",
            "id field 'id' must be a string or number, got dict",
            None,
        ),
        (b'{"id": "u", "text": "caf\xe9"}', "read", "invalid UTF-8 at byte 24", None),
    ],
)
def test_bad_lines_become_dead_letters(raw, stage, error, known_id):
    letter = parse_line(raw, SPEC)
    assert isinstance(letter, DeadLetter)
    assert (letter.stage, letter.error, letter.id) == (stage, error, known_id)
    assert letter.input  # the raw line is kept for the dead letter


def test_oversized_line_is_dead_lettered_with_a_truncated_input():
    raw = json.dumps({"id": "big", "text": "x" * 5000}).encode()
    letter = parse_line(raw, RecordSpec(max_record_bytes=1000, on_overflow="error"))
    assert (
        letter.stage == "read"
        and letter.error
        == f"line is {len(raw)} bytes, over --max_record_bytes=1000; "
        "raise the limit or pass --on_overflow truncate to keep its start"
    )
    assert len(letter.input) < 2100 and letter.input.endswith("more chars]")


def test_custom_fields():
    rec = to_record({"review_id": "r9", "body": "ok", "id": "other"}, RecordSpec("body", "review_id"), "src")
    assert rec == Record("r9", "ok", {"id": "other"}, "src")


def test_detect_format():
    assert detect_format("gs://b/in/*.parquet") == "parquet"
    assert detect_format("data/x.jsonl") == "jsonl"
    assert detect_format("data/x.txt", "parquet") == "parquet"


def test_read_jsonl_glob(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"id": "1", "text": "one"}\r\n\r\n{"id": "2", "text": "two"}\n')
    (tmp_path / "b.jsonl").write_bytes(b'{"id": "3", "text": "three"}\nnope\n')
    with BeamPipeline(runner=RUNNER) as p:
        records, errors = p | ReadRecords(str(tmp_path / "*.jsonl"), SPEC)
        assert_that(
            records | beam.Map(lambda r: (r.id, r.text)),
            equal_to([("1", "one"), ("2", "two"), ("3", "three")]),
            label="records",
        )
        assert_that(errors | beam.Map(lambda e: (e.stage, e.input)), equal_to([("read", "nope")]), label="errors")


def test_read_parquet_with_a_corrupt_file(tmp_path):
    table = pa.table({"id": ["p1", "p2"], "text": ["first", "second"], "score": [1.5, None]})
    pq.write_table(table, tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not a parquet footer")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "schema.parquet")
    with BeamPipeline(runner=RUNNER) as p:
        records, errors = p | ReadRecords(str(tmp_path / "*.parquet"), SPEC)
        assert_that(
            records | beam.Map(lambda r: (r.id, r.text, r.extra)),
            equal_to([("p1", "first", {"score": 1.5}), ("p2", "second", {"score": None})]),
            label="records",
        )
        assert_that(
            errors | beam.Map(lambda e: (e.stage, e.input.rsplit("/", 1)[-1], e.error.split(":")[0])),
            equal_to(
                [
                    ("read", "bad.parquet", "cannot read Parquet file"),
                    ("read", "schema.parquet", "cannot read Parquet file"),
                ]
            ),
            label="errors",
        )
