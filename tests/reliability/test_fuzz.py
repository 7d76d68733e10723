"""Property tests: arbitrary bytes and values through the readers and parsers. Every non-blank line is exactly
one Record or one DeadLetter, what passes is writable (UTF-8, strict JSON), and no exception escapes."""

from __future__ import annotations

import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.records import DeadLetter, Record
from common.text import extra_json
from inference.requests import Answer
from pipelines.io import RecordSpec, _ReadParquetFile, error_json, parse_line
from transforms.registry import shortcut

SPEC = RecordSpec(max_record_bytes=400, on_overflow="error")
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON's \uXXXX escapes can carry lone surrogates, which no UTF-8 writer accepts: generate them too.
any_chars = st.text(st.characters(exclude_categories=()), max_size=40)
edge_cases = st.sampled_from([math.nan, math.inf, -math.inf, "\ud800", "a\udfffb", "\x00", "\u2028", 2**70])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | any_chars | edge_cases
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
records = st.fixed_dictionaries(
    {},
    optional={"id": json_values, "text": json_values | st.text(max_size=200), "x": json_values},
)


def _is_blank(raw: bytes) -> bool:
    try:
        return not raw.decode("utf-8").lstrip("\ufeff").strip()
    except UnicodeDecodeError:
        return False


def _assert_writable(record: Record) -> None:
    """What the sinks will do with it: UTF-8 strings, extra as strict JSON."""
    assert isinstance(record.id, str) and record.id
    assert isinstance(record.text, str) and record.text == record.text.strip() and record.text
    record.id.encode("utf-8")
    record.text.encode("utf-8")
    extra = extra_json(record.extra)
    extra.encode("utf-8")
    json.loads(extra, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"non-JSON constant {name}")))


def _check_line(raw: bytes) -> None:
    out = parse_line(raw, SPEC)
    if out is None:
        assert _is_blank(raw)
        return
    assert not _is_blank(raw)
    if isinstance(out, DeadLetter):
        assert out.stage in ("read", "validate") and out.error
        assert json.loads(error_json(out).encode("utf-8")) == out.to_dict()  # the errors file can hold it
    else:
        assert isinstance(out, Record)
        _assert_writable(out)


@FAST
@given(st.binary(max_size=600))
def test_any_bytes_are_a_record_a_dead_letter_or_blank(raw):
    _check_line(raw)


@FAST
@given(records)
def test_any_json_object_is_a_record_or_a_dead_letter(obj):
    _check_line(json.dumps(obj).encode("utf-8"))
    try:
        raw = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates cannot be raw UTF-8: only the escaped form above exists in a file
    _check_line(raw)


@FAST
@given(
    st.fixed_dictionaries(
        {"text": st.text(min_size=1, max_size=50).filter(str.strip)}, optional={"id": json_values, "x": json_values}
    )
)
def test_any_valid_text_with_any_id_and_extra_is_writable_or_a_dead_letter(obj):
    _check_line(json.dumps(obj).encode("utf-8"))


@FAST
@given(st.lists(st.binary(max_size=80), max_size=30))
def test_a_file_of_lines_accounts_for_every_non_blank_line(lines):
    outcomes = [parse_line(line, SPEC) for line in b"\n".join(lines).split(b"\n")]
    non_blank = [line for line in b"\n".join(lines).split(b"\n") if not _is_blank(line)]
    assert len([o for o in outcomes if o is not None]) == len(non_blank)


class _Readable:
    """fileio.ReadableFile for bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.metadata = type("Metadata", (), {"path": "mem://fuzz.parquet"})()

    def open(self):
        return io.BytesIO(self._data)


def _read_parquet(data: bytes) -> tuple[list, list]:
    dofn = _ReadParquetFile(SPEC)
    outs = list(dofn.process(_Readable(data)))
    letters = [o.value for o in outs if hasattr(o, "tag")]
    return [o for o in outs if not hasattr(o, "tag")], letters


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_as_a_parquet_file_are_one_dead_letter(data):
    records, letters = _read_parquet(data)
    assert records == [] and len(letters) == 1 and letters[0].error.startswith("cannot read Parquet file")


def _parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


cells = st.none() | st.text(max_size=60) | st.integers(-(2**40), 2**40)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({"id": st.none() | st.text(max_size=5), "text": cells}), min_size=1, max_size=8))
def test_every_parquet_row_is_a_record_or_a_dead_letter(rows):
    for row in rows:  # one column type per file, as Parquet requires
        if isinstance(row["text"], int):
            row["text"] = str(row["text"])
    records, letters = _read_parquet(_parquet(rows))
    assert len(records) + len(letters) == len(rows)
    for record in records:
        _assert_writable(record)


@FAST
@given(st.text(max_size=300))
def test_clean_summary_is_one_clean_line(text):
    out = SUMMARIZE.clean(text)
    assert isinstance(out, str) and "\n" not in out and out == out.strip()
    for token in ("<start_of_turn>", "<end_of_turn>", "<eos>", "<bos>"):
        assert token not in out


SUMMARIZE = shortcut("summarize").tasks[0]
TASK = shortcut("classify", labels=("billing", "shipping", "other"), calibrate=False).tasks[0]
NAMES = {label.name for label in TASK.labels}
scores = st.floats(allow_nan=True, allow_infinity=True, width=64)


@FAST
@given(st.lists(scores, min_size=0, max_size=5), st.none() | st.lists(scores, min_size=3, max_size=3))
def test_score_parsing_gives_a_label_from_the_set_or_a_value_error(logprobs, prior):
    answer = Answer(tuple(logprobs), None if prior is None else tuple(prior))
    try:
        columns = TASK.columns((answer,))
    except ValueError:
        return  # becomes a parse dead letter
    assert columns["label"] in NAMES and set(columns["label_scores"]) == NAMES
    probabilities = list(columns["label_scores"].values())
    assert all(0.0 <= p <= 1.0 for p in probabilities) and math.isclose(sum(probabilities), 1.0, rel_tol=1e-9)
    assert columns["confidence"] == max(probabilities)
