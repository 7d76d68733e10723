"""extract: fields pulled out of each record by a JSON schema, into typed columns.

    - name: ticket
      kind: extract
      schema:
        type: object
        properties:
          product: {type: string, maxLength: 60}
          issue: {enum: [billing, shipping, defect, other]}
          refund_requested: {type: boolean}
          amount: {type: [number, "null"], description: the amount the customer names}
        required: [product, issue, refund_requested, amount]

Decoding is constrained by the schema (``SamplingParams.json_schema``), so the model can only write JSON the
schema accepts; the row gets one column per top-level property (``ticket_product``, ...), nested objects as
structs and arrays as lists. An output that still does not parse and validate, such as one cut by
``max_new_tokens`` before its object closed, is a dead letter (stage parse) carrying the partial text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from common.text import preview
from gemma_ops.constraints import compile_json_schema
from gemma_ops.sampling import SamplingParams
from inference.requests import Answer, Piece, Question
from transforms.examples import Example, load_examples
from transforms.json_schema import SchemaError, arrow_fields, check_value, normalize, schema_json
from transforms.prompting import CHAT, DELIMITER, record_block
from transforms.task import Task
from transforms.taskfile import TaskFileError, where

DEFAULT_INSTRUCTIONS = "Extract these fields from each text as one JSON object."
QUESTION = "JSON:"
DEFAULT_MAX_NEW_TOKENS = 256
PARTIAL_CHARS = 500  # of a broken output, kept in its dead letter


def describe(node: Mapping[str, Any]) -> str:
    """What a schema node asks for, in words the prompt lists: "one of billing, shipping", "number or null"."""
    kind = node["_kind"]
    if "enum" in node:
        text = "one of " + ", ".join(v for v in node["enum"] if v is not None)
    elif kind == "array":
        text = f"a list; each item: {describe(node['items'])}"
    elif kind == "object":
        text = "an object with " + ", ".join(node["properties"])
    else:
        text = {"string": "text", "number": "number", "integer": "whole number", "boolean": "true or false"}[kind]
    return text + (" or null" if node["_nullable"] else "")


def ordered(value: Any, node: Mapping[str, Any]) -> Any:
    """A value with its objects' keys in the schema's order (the order the grammar makes the model write)."""
    if isinstance(value, dict) and node["_kind"] == "object":
        props = node["properties"]
        return {name: ordered(value[name], props[name]) for name in props if name in value}
    if isinstance(value, list) and node["_kind"] == "array":
        return [ordered(item, node["items"]) for item in value]
    return value


class ExtractTask(Task):
    """Columns: one per top-level property of the schema, typed by it."""

    def __init__(
        self,
        name: str,
        schema: Mapping[str, Any],
        *,
        instructions: str = DEFAULT_INSTRUCTIONS,
        examples: tuple[Example, ...] = (),
        params: SamplingParams | None = None,
    ) -> None:
        """``schema``: as ``json_schema.normalize`` returns it (SchemaError otherwise names what to change)."""
        if schema.get("_kind") != "object":
            raise SchemaError("an extract schema must be an object (type: object) with properties")
        self.name = name
        self.schema = dict(schema)
        self.instructions = instructions
        self.examples = examples
        params = params or SamplingParams(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        self.params = dataclasses.replace(params, json_schema=schema_json(self.schema))

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any], source: str, read: Callable[[str], bytes]) -> ExtractTask:
        name = raw["name"]
        place = where(source, name, "schema")
        spec = raw["schema"]
        if isinstance(spec, str):  # JSON text (or YAML) in a string
            import yaml

            try:
                spec = yaml.safe_load(spec)
            except yaml.YAMLError as err:
                raise TaskFileError(f"{place}: not valid JSON or YAML: {err}") from err
        try:
            schema = normalize(spec)
            if schema["_kind"] != "object" or schema["_nullable"]:
                raise SchemaError("schema: the top level must be type: object (each property becomes a column)")
            compile_json_schema(schema_json(schema))  # what the grammar library refuses, refused now
        except ValueError as err:
            raise TaskFileError(f"{place}: {err}") from err
        examples: tuple[Example, ...] = ()
        if "examples" in raw:
            examples_place = where(source, name, "examples")
            examples = load_examples(raw["examples"], examples_place, "output", False, read, structured=True)
            examples = tuple(_checked_example(e, schema, examples_place) for e in examples)
        params = SamplingParams(
            max_new_tokens=raw.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            temperature=raw.get("temperature", 0.0),
            seed=raw.get("seed"),
        )
        return cls(
            name,
            schema,
            instructions=raw.get("instructions", DEFAULT_INSTRUCTIONS),
            examples=examples,
            params=params,
        )

    # -- prompt

    def section(self, style: str, input_label: str) -> str:
        lines = []
        for prop, node in self.schema["properties"].items():
            about = f": {' '.join(node['description'].split())}" if node.get("description") else ""
            lines.append(f"- {prop} ({describe(node)}){about}")
        text = self.instructions + (" Answer with the JSON object only." if style == CHAT else "")
        parts = [f"{text}\n\nFields:\n" + "\n".join(lines) + "\n\n"]
        for example in self.examples:
            parts.append(record_block(input_label, example.text) + f"{QUESTION}\n{example.answer}\n\n")
        return "".join(parts)

    def tails(self, style: str) -> tuple[tuple[Piece, ...], ...]:
        return ((f"{DELIMITER}\n{QUESTION}\n",),)

    def questions(self) -> tuple[Question, ...]:
        return (Question(params=self.params),)

    # -- columns

    def columns(self, answers: tuple[Answer, ...]) -> dict[str, Any]:
        (answer,) = answers
        text = answer.text.strip()
        if answer.finish_reason not in ("stop", "length"):
            raise ValueError(f"unexpected finish_reason {answer.finish_reason!r}")
        try:
            return check_value(json.loads(text), self.schema)
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            if answer.finish_reason == "length":
                raise ValueError(
                    f"the output was cut at max_new_tokens ({self.params.max_new_tokens}) before its JSON "
                    f"object closed (raise max_new_tokens); partial output: {preview(text, PARTIAL_CHARS)}"
                ) from err
            raise ValueError(
                f"the output is not JSON the schema accepts ({err}): {preview(text, PARTIAL_CHARS)}"
            ) from err

    def fields(self) -> list[pa.Field]:
        return arrow_fields(self.schema)


def _checked_example(example: Example, schema: Mapping[str, Any], place: str) -> Example:
    """An example whose output the schema accepts, written the way the model is made to write it."""
    value = json.loads(str(example.answer))
    try:
        check_value(value, schema)
    except ValueError as err:
        raise TaskFileError(f"{place}: example {example.text[:40]!r}: its output breaks the schema: {err}") from err
    return Example(example.text, json.dumps(ordered(value, schema), ensure_ascii=False), example.fields)
