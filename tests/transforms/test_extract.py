"""extract tasks: the schema subset (each type, nesting, enums, arrays, nullable), refused keywords, the Arrow
columns, parsed rows, and dead letters for output that is cut or breaks the schema."""

from __future__ import annotations

import json
import re

import apache_beam as beam
import pyarrow as pa
import pytest
import yaml

from common.records import ERRORS_TAG, Record
from inference.requests import Answer, RecordResponse
from transforms.infer import _ToRows
from transforms.json_schema import check_value, normalize
from transforms.registry import build_task_set
from transforms.taskfile import TaskFileError, parse_task_file

TICKETS = """
input_label: Ticket
tasks:
  - name: ticket
    kind: extract
    schema:
      type: object
      properties:
        product: {type: string, maxLength: 20, description: the product named}
        issue: {enum: [billing, shipping, defect, other]}
        refund_requested: {type: boolean}
        amount: {type: [number, "null"]}
        quantity: {type: integer}
        tags: {type: array, items: {type: string}, maxItems: 3}
        address: {type: object, properties: {city: {type: string}, zip: {type: [string, "null"]}}, required: [city]}
      required: [product, issue, refund_requested, amount, tags]
    examples:
      - text: My Acme blender broke
        output: {issue: defect, product: Acme blender, refund_requested: false, amount: null, tags: []}
"""


def task_set(text: str = TICKETS, source: str = "t.yaml"):
    return build_task_set(parse_task_file(yaml.safe_load(text), source), read=lambda path: b"")


def with_schema(schema: dict) -> str:
    return yaml.safe_dump({"tasks": [{"name": "x", "kind": "extract", "schema": schema}]})


def response(text: str, finish_reason: str = "stop") -> RecordResponse:
    return RecordResponse((Answer(text=text, finish_reason=finish_reason, output_tokens=9),), 12, False, "c", "m")


def test_columns_are_typed_by_the_schema_and_prefixed():
    schema = task_set().schema()
    address = pa.struct([pa.field("city", pa.string(), nullable=False), pa.field("zip", pa.string())])
    expected = {
        "ticket_product": (pa.string(), False),
        "ticket_issue": (pa.string(), False),
        "ticket_refund_requested": (pa.bool_(), False),
        "ticket_amount": (pa.float64(), True),  # [number, null]
        "ticket_quantity": (pa.int64(), True),  # not required
        "ticket_tags": (pa.list_(pa.field("item", pa.string(), nullable=False)), False),
        "ticket_address": (address, True),
    }
    got = {f.name: (f.type, f.nullable) for f in schema if f.name.startswith("ticket_")}
    assert got == expected
    assert schema.names[:2] == ["id", "ticket_product"] and "ticket_finish_reason" not in schema.names


def test_a_row_from_valid_json():
    tasks = task_set()
    text = json.dumps(
        {
            "product": "Zen headphones",
            "issue": "billing",
            "refund_requested": True,
            "amount": 12,
            "tags": ["double charge"],
            "address": {"city": "Lyon"},
        }
    )
    row = tasks.to_row(Record("r1", "charged twice", {}), response(text), "run", "fp")
    assert {k: v for k, v in row.items() if k.startswith("ticket_")} == {
        "ticket_product": "Zen headphones",
        "ticket_issue": "billing",
        "ticket_refund_requested": True,
        "ticket_amount": 12.0,  # a JSON integer in a number column is a float
        "ticket_quantity": None,  # optional and absent
        "ticket_tags": ["double charge"],
        "ticket_address": {"city": "Lyon", "zip": None},
    }
    assert isinstance(row["ticket_amount"], float)
    assert pa.Table.from_pylist([row], schema=tasks.schema()).num_rows == 1


def test_the_grammar_schema_is_closed_and_keeps_property_order():
    (task,) = task_set().tasks
    grammar = json.loads(task.params.json_schema)
    assert list(grammar["properties"]) == [
        "product",
        "issue",
        "refund_requested",
        "amount",
        "quantity",
        "tags",
        "address",
    ]
    assert grammar["additionalProperties"] is False
    assert grammar["properties"]["address"]["additionalProperties"] is False
    # integers stay inside INT64 (the property-based test found a random model writing 23 digits)
    assert grammar["properties"]["quantity"] == {"type": "integer", "minimum": -(10**18), "maximum": 10**18}
    assert task.params.stop == () and task.params.max_new_tokens == 256


def test_prompt_lists_fields_and_writes_examples_in_schema_order():
    (task,) = task_set().tasks
    section = task.section("completion", "Ticket")
    assert "- issue (one of billing, shipping, defect, other)\n" in section
    assert "- amount (number or null)\n" in section
    assert "- product (text): the product named\n" in section
    assert "- tags (a list; each item: text)\n" in section
    example = '{"product": "Acme blender", "issue": "defect", "refund_requested": false, "amount": null, "tags": []}'
    assert f'Ticket: """My Acme blender broke"""\nJSON:\n{example}\n\n' in section
    assert task.tails("completion") == (('"""\nJSON:\n',),)


@pytest.mark.parametrize(
    ("schema", "value", "column"),
    [
        ({"type": "string"}, "a", "a"),
        ({"type": "number"}, 2, 2.0),
        ({"type": "integer"}, -7, -7),
        ({"type": "boolean"}, False, False),
        ({"enum": ["a", "b"]}, "b", "b"),
        ({"type": ["integer", "null"]}, None, None),
        ({"type": ["string", "null"], "enum": ["a"]}, None, None),
        ({"type": "array", "items": {"type": "number"}}, [1, 2.5], [1.0, 2.5]),
        ({"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2}, ["y"], ["y"]),
        (
            {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}}},
            {"a": {"b": 1}},
            {"a": {"b": 1}},
        ),
    ],
)
def test_each_supported_type_accepts_its_values(schema, value, column):
    assert check_value(value, normalize(schema)) == column


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        ({"type": "string", "maxLength": 3}, "abcd", "4 characters"),
        ({"type": "integer"}, 1.5, "expected an integer"),
        ({"type": "integer"}, 2**63, "within INT64"),
        ({"type": "number"}, True, "expected a number"),
        ({"type": "boolean"}, "true", "expected true or false"),
        ({"enum": ["a", "b"]}, "c", "'c' is not one of ['a', 'b']"),
        ({"type": "string"}, None, "null where a string is required"),
        ({"type": "array", "items": {"type": "string"}, "maxItems": 1}, ["a", "b"], "2 items"),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, {"b": "x"}, "property 'b' is not in"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, {}, "'a' is missing"),
        (
            {"type": "object", "properties": {"a": {"type": "number"}}},
            {"a": float("inf")},
            "$.a: inf is not a finite number",
        ),
    ],
)
def test_values_that_break_the_schema_are_refused(schema, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_value(value, normalize(schema))


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}},
            "schema.properties.d: keyword 'format' is not supported for type string",
        ),
        (
            {"type": "object", "properties": {"d": {"anyOf": [{"type": "string"}]}}},
            "schema.properties.d: keyword 'anyOf' is not supported; write a type",
        ),
        (
            {"type": "object", "properties": {"d": {"type": "string", "pattern": "a+"}}},
            "keyword 'pattern' is not supported",
        ),
        ({"type": "object", "properties": {"n": {"type": "number", "minimum": 0}}}, "keyword 'minimum'"),
        ({"type": "object", "properties": {"d": {"type": ["string", "integer"]}}}, 'one type and "null"'),
        ({"type": "object", "properties": {"l": {"type": "array"}}}, "an array needs items"),
        (
            {
                "type": "object",
                "properties": {"l": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}},
            },
            "arrays of arrays",
        ),
        ({"type": "object", "properties": {"Bad-Name": {"type": "string"}}}, "property 'Bad-Name'"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b', which is not"),
        ({"type": "object", "properties": {}}, "an object needs properties"),
        ({"type": "object", "properties": {"a": {"enum": [1, 2]}}}, "enum must list distinct strings"),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True},
            "additionalProperties may only be false",
        ),
        ({"type": "string"}, "the top level must be type: object"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "minLength": 5, "maxLength": 2}}},
            "minLength 5 is above maxLength 2; no value could match",
        ),
    ],
)
def test_unsupported_schemas_are_refused_naming_file_task_key_and_keyword(schema, message):
    with pytest.raises(TaskFileError) as err:
        task_set(with_schema(schema), source="tasks.yaml")
    assert str(err.value).startswith("tasks.yaml: task 'x': key 'schema': ")
    assert message in str(err.value)


def test_schema_as_json_text_and_bad_examples():
    text = yaml.safe_dump(
        {
            "tasks": [
                {
                    "name": "x",
                    "kind": "extract",
                    "schema": '{"type": "object", "properties": {"n": {"type": "integer"}}}',
                }
            ]
        }
    )
    assert task_set(text).schema().field("x_n").type == pa.int64()
    bad = yaml.safe_dump(
        {
            "tasks": [
                {
                    "name": "x",
                    "kind": "extract",
                    "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
                    "examples": [{"text": "five", "output": {"n": "five"}}],
                }
            ]
        }
    )
    with pytest.raises(TaskFileError, match=r"key 'examples': example 'five': its output breaks the schema: \$.n"):
        task_set(bad)


def test_a_column_that_would_appear_twice_is_refused():
    text = yaml.safe_dump(
        {
            "tasks": [
                {
                    "name": "run",
                    "kind": "extract",
                    "schema": {"type": "object", "properties": {"id": {"type": "string"}}},
                }
            ]
        }
    )
    with pytest.raises(ValueError, match="column 'run_id' would appear twice"):
        task_set(text)


def parse(tasks, text: str, finish_reason: str):
    """What the pipeline's parse step makes of one answer: a row, or a dead letter."""
    out = list(
        _ToRows(tasks, "run", "fp").process((Record("r1", "text", {}, source="{raw}"), response(text, finish_reason)))
    )
    assert len(out) == 1
    return out[0]


def test_output_cut_by_max_new_tokens_is_a_parse_dead_letter_with_the_partial_text():
    partial = '{"product": "Zen headphones", "issue": "bil'
    letter = parse(task_set(), partial, "length")
    assert isinstance(letter, beam.pvalue.TaggedOutput) and letter.tag == ERRORS_TAG
    assert letter.value.stage == "parse" and letter.value.id == "r1"
    assert "cut at max_new_tokens (256) before its JSON object closed" in letter.value.error
    assert letter.value.error.endswith(partial)


def test_output_that_breaks_the_schema_is_a_parse_dead_letter():
    letter = parse(
        task_set(), '{"product": "x", "issue": "refund", "refund_requested": true, "amount": 1, "tags": []}', "stop"
    )
    assert letter.value.stage == "parse"
    assert "'refund' is not one of" in letter.value.error
    row = parse(
        task_set(),
        '{"product": "x", "issue": "other", "refund_requested": false, "amount": null, "tags": []}',
        "length",
    )
    assert row["ticket_issue"] == "other"  # complete and valid, though it used every token: a row


def test_the_fingerprint_follows_the_schema():
    changed = TICKETS.replace("maxLength: 20", "maxLength: 30")
    assert task_set().fingerprint() == task_set().fingerprint() != task_set(changed).fingerprint()


def test_the_shipped_example_is_valid_for_its_input():
    from pathlib import Path

    from pipelines.options import JobConfig
    from pipelines.preflight import preflight
    from transforms.registry import make_task_set

    folder = Path(__file__).resolve().parents[2] / "docs" / "examples"
    config = JobConfig(input=str(folder / "tickets.jsonl"), output="-", task_file=str(folder / "ticket_extract.yaml"))
    tasks = make_task_set(config)
    preflight(config, tasks)
    assert tasks.schema().names[1:5] == ["ticket_product", "ticket_issue", "ticket_refund_requested", "ticket_amount"]
    assert len(tasks.tasks[0].examples) == 3
