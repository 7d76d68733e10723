"""The shipped extract example (docs/examples/ticket_extract.yaml) through the real pipeline on the embedded Gemma 3
270M: every record becomes a row whose typed columns the schema accepts; with too few tokens, every record becomes
a parse dead letter carrying its partial JSON, and no row is written."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from pipelines.progress import RunSummary
from tests.reliability.jobs import error_rows, result_rows, run_job
from transforms.json_schema import check_value, normalize

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
pytestmark = pytest.mark.embedded


def run(tmp_path: Path, max_new_tokens: int, records: int = 4) -> RunSummary:
    spec = yaml.safe_load((EXAMPLES / "ticket_extract.yaml").read_text())
    spec["tasks"][0]["max_new_tokens"] = max_new_tokens
    task_file = tmp_path / "extract.yaml"
    task_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join((EXAMPLES / "tickets.jsonl").read_text().splitlines(keepends=True)[:records]))
    config = JobConfig(
        input=str(data),
        output=str(tmp_path / "out"),
        task_file=str(task_file),
        run_id="x",
        num_shards=1,
        prompt_style="completion",
        dtype="float32",
        model_copies=0,
        max_error_rate=1.0,
    )
    return run_job(config, GemmaModelHandler(ModelSettings.of(config)))


def test_every_ticket_becomes_a_typed_row_the_schema_accepts(tmp_path):
    summary = run(tmp_path, max_new_tokens=64)
    table = pq.read_table(summary.result_files[0])
    assert error_rows(summary) == [] and table.num_rows == 4 and len(summary.result_files) == 1
    types = {name: table.schema.field(name).type for name in table.schema.names}
    assert types["ticket_product"] == pa.string() and types["ticket_issue"] == pa.string()
    assert types["ticket_refund_requested"] == pa.bool_() and types["ticket_amount"] == pa.float64()
    schema = normalize(yaml.safe_load((EXAMPLES / "ticket_extract.yaml").read_text())["tasks"][0]["schema"])
    for row in table.to_pylist():
        value = {key.removeprefix("ticket_"): v for key, v in row.items() if key.startswith("ticket_")}
        assert check_value(value, schema) == value
        assert 0 < row["output_tokens"] <= 64


def test_output_cut_by_max_new_tokens_is_a_dead_letter_never_a_row(tmp_path):
    summary = run(tmp_path, max_new_tokens=5, records=2)
    assert result_rows(summary) == []
    letters = error_rows(summary)
    assert sorted(letter["id"] for letter in letters) == ["t01", "t02"]
    for letter in letters:
        assert letter["stage"] == "parse"
        assert "cut at max_new_tokens (5) before its JSON object closed" in letter["error"]
        assert letter["error"].split("partial output: ")[1].startswith('{"product": "')
