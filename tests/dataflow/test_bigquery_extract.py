"""An extract task's schema in BigQuery (the emulator): integer -> INT64, number -> FLOAT64, boolean -> BOOL, enum ->
STRING, array -> REPEATED, object -> RECORD; rows parsed from model output load, and an analyst's query runs."""

from __future__ import annotations

import datetime
import json

import apache_beam as beam
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from common.records import Record
from inference.requests import Answer, RecordResponse
from pipelines import bigquery as bq
from tests.dataflow.conftest import PROJECT
from tests.dataflow.test_bigquery_emulator import legacy, query
from transforms.registry import build_task_set
from transforms.taskfile import parse_task_file

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
RUN_DATE = datetime.date(2026, 11, 24)
TASKS = """
tasks:
  - name: ticket
    kind: extract
    schema:
      type: object
      properties:
        product: {type: string}
        issue: {enum: [billing, shipping, defect, other]}
        refund_requested: {type: boolean}
        amount: {type: [number, "null"]}
        items: {type: integer}
        tags: {type: array, items: {type: string}}
        customer: {type: object, properties: {name: {type: string}, vip: {type: boolean}}, required: [name]}
      required: [product, issue, refund_requested, amount, tags]
"""
OUTPUTS = [
    {"product": "Zen headphones", "issue": "billing", "refund_requested": True, "amount": 59.0, "tags": ["twice"]},
    {"product": "Acme blender", "issue": "defect", "refund_requested": True, "amount": 49.99, "items": 2, "tags": []},
    {"product": "lamp", "issue": "shipping", "refund_requested": False, "amount": None, "tags": ["late", "parcel"],
     "customer": {"name": "Ana", "vip": True}},
]  # fmt: skip


def test_extract_columns_load_into_bigquery_with_their_types(emulators, undecorated):
    tasks = build_task_set(parse_task_file(yaml.safe_load(TASKS), "t.yaml"))
    schema = tasks.schema()
    rows = [
        tasks.to_row(
            Record(f"t{i}", "ticket text", {}),
            RecordResponse((Answer(text=json.dumps(out), finish_reason="stop"),), 10, False, "completion", "m"),
            "run-x",
            "fp",
        )
        for i, out in enumerate(OUTPUTS)
    ]
    client = emulators.client
    client.create_dataset("extract")
    options = PipelineOptions([f"--project={PROJECT}", f"--temp_location={emulators.temp_location}"])
    with beam.Pipeline(runner=RUNNER, options=options) as pipeline:
        valid, _bad = pipeline | beam.Create(rows) | bq.ValidateForBigQuery(schema, RUN_DATE)
        _ = valid | bq.LoadPartition(f"{PROJECT}:extract.tickets", schema, RUN_DATE, emulators.temp_location)

    table = client.get_table(f"{PROJECT}.extract.tickets")
    columns = {f.name: (legacy(f.field_type), f.mode) for f in table.schema}
    assert {k: v for k, v in columns.items() if k.startswith("ticket_")} == {
        "ticket_product": ("STRING", "REQUIRED"),
        "ticket_issue": ("STRING", "REQUIRED"),
        "ticket_refund_requested": ("BOOLEAN", "REQUIRED"),
        "ticket_amount": ("FLOAT", "NULLABLE"),
        "ticket_items": ("INTEGER", "NULLABLE"),
        "ticket_tags": ("STRING", "REPEATED"),
        "ticket_customer": ("RECORD", "NULLABLE"),
    }
    customer = next(f for f in table.schema if f.name == "ticket_customer")
    assert [(f.name, legacy(f.field_type), f.mode) for f in customer.fields] == [
        ("name", "STRING", "REQUIRED"),
        ("vip", "BOOLEAN", "NULLABLE"),
    ]

    # The README's analyst query, on this table: refunds asked for, by issue, with the amounts at stake.
    summary = query(
        client,
        "SELECT ticket_issue, COUNT(*) AS tickets, SUM(ticket_amount) AS amount_at_stake, "
        "COUNTIF(ticket_amount IS NULL) AS amount_unknown FROM extract.tickets WHERE ticket_refund_requested "
        "GROUP BY ticket_issue ORDER BY amount_at_stake DESC",
    )
    assert summary == [
        {"ticket_issue": "billing", "tickets": 1, "amount_at_stake": 59.0, "amount_unknown": 0},
        {"ticket_issue": "defect", "tickets": 1, "amount_at_stake": 49.99, "amount_unknown": 0},
    ]
    tags = client.query("SELECT t FROM extract.tickets, UNNEST(ticket_tags) AS t WHERE id = 't2' ORDER BY t").result()
    assert [row["t"] for row in tags] == ["late", "parcel"]
    vip = client.query("SELECT id FROM extract.tickets WHERE ticket_customer.vip").result()
    assert [row["id"] for row in vip] == ["t2"]
