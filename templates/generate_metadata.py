"""Write templates/metadata.json from the pipeline's PipelineOptions, so the two cannot disagree.

    python templates/generate_metadata.py            # rewrite metadata.json
    python templates/generate_metadata.py --check    # exit 1 when the committed file is stale

Every parameter gets a label, the flag's help text and a validation regex: gs:// paths, the choices of
choice flags, numbers, booleans, BigQuery table names. Required parameters are the JobConfig fields that have
no default (``--input``, ``--output``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METADATA = HERE / "metadata.json"
ROOT = HERE.parent

GCS_PATH = r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/.*)?$"
GCS_PATTERN = r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+$"
INTEGER = r"^-?[0-9]+$"
NON_NEGATIVE = r"^[0-9]+$"
NUMBER = r"^[0-9]+([.][0-9]+)?$"
BOOLEAN = r"^(true|false)$"
DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
BQ_TABLE = r"^[a-z][-a-z0-9]{4,28}[a-z0-9][:.][A-Za-z0-9_]+[.][-A-Za-z0-9_]+$"
LABEL_LIST = r"^[^,]+(,[^,]+)+$"
TOKEN = r"^[-A-Za-z0-9_.:]+$"

# Parameters whose meaning a type alone does not tell.
BY_NAME = {
    "input": GCS_PATTERN,
    "output": GCS_PATH,
    "model": r"^(embedded|gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+)$",
    "output_table": BQ_TABLE,
    "task_labels": LABEL_LIST,
    "text_field": FIELD_NAME,
    "id_field": FIELD_NAME,
    "device": r"^(cpu|cuda(:[0-9]+)?)$",
    "dtype": r"^(float32|bfloat16|float16)$",
    "run_id": TOKEN,
    "run_date": DATE,
    "run_date_offset_days": INTEGER,
    "seed": INTEGER,
}


def _load_entry_module():
    spec = importlib.util.spec_from_file_location("flex_template_main", HERE / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def option_actions() -> list[argparse.Action]:
    """The flags of pipelines.options' PipelineOptions subclass, then the entry module's launch flags."""
    sys.path.insert(0, str(ROOT))
    from pipelines.options import GemmaOptions

    # --run_date is both a pipeline option and a launch flag; the launch one (which also fills {run_date}
    # in other parameters) describes it for the template.
    parser = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    GemmaOptions._add_argparse_args(parser)
    _load_entry_module().add_launch_arguments(parser)
    return [a for a in parser._actions if a.option_strings]


def required_names() -> set[str]:
    from pipelines.options import JobConfig

    missing = dataclasses.MISSING
    return {f.name for f in dataclasses.fields(JobConfig) if f.default is missing and f.default_factory is missing}


def regex_for(action: argparse.Action) -> str | None:
    if action.dest in BY_NAME:
        return BY_NAME[action.dest]
    if action.choices:
        return "^(" + "|".join(str(c) for c in action.choices) + ")$"
    if action.nargs == 0:
        return BOOLEAN
    if action.type is int:
        return NON_NEGATIVE
    if action.type is float:
        return NUMBER
    return None


def label_for(name: str) -> str:
    words = name.replace("_", " ").split()
    return " ".join([words[0].capitalize(), *words[1:]])


def parameter(action: argparse.Action, required: set[str]) -> dict[str, Any]:
    name = action.dest
    if not action.help:
        raise ValueError(f"--{name} has no help text; add one in pipelines/options.py")
    help_text = action.help
    if action.default not in (None, False) and "default" not in help_text.lower():
        help_text += f" Default: {action.default}."
    param: dict[str, Any] = {
        "name": name,
        "label": label_for(name),
        "helpText": help_text,
        "isOptional": name not in required,
    }
    regex = regex_for(action)
    if regex is not None:
        param["regexes"] = [regex]
    return param


def build_metadata() -> dict[str, Any]:
    required = required_names()
    return {
        "name": "Gemma batch inference",
        "description": "Runs a Gemma model over JSONL/Parquet records in Cloud Storage (sentiment, classify or "
        "summarize) and writes typed results to Parquet/JSONL files or a date-partitioned BigQuery table.",
        "streaming": False,
        "supportsAtLeastOnce": False,
        "supportsExactlyOnce": True,
        "defaultStreamingMode": "UNSPECIFIED",
        "parameters": [parameter(a, required) for a in option_actions()],
    }


def render() -> str:
    return json.dumps(build_metadata(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not METADATA.is_file() or METADATA.read_text() != text:
            print(f"{METADATA} is stale: run python templates/generate_metadata.py", file=sys.stderr)
            return 1
        return 0
    METADATA.write_text(text)
    print(f"wrote {METADATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
