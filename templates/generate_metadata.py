"""Write templates/metadata.json from the job's declared settings, so the two cannot disagree.

    python templates/generate_metadata.py            # rewrite metadata.json
    python templates/generate_metadata.py --check    # exit 1 when the committed file is stale

Every parameter gets a label, the setting's help text and a validation regex (the setting's own pattern, or
one derived from its type and choices). Required parameters are the settings without a default (``--input``,
``--output``). The entry module's launch flags (``--run_date``, ``--run_date_offset_days``) are added; its
``--run_date``, which also fills ``{run_date}`` in other parameters, describes that parameter.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METADATA = HERE / "metadata.json"
ROOT = HERE.parent


def _load_entry_module():
    spec = importlib.util.spec_from_file_location("flex_template_main", HERE / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def label_for(name: str) -> str:
    words = name.replace("_", " ").split()
    return " ".join([words[0].capitalize(), *words[1:]])


def _parameter(name: str, help_text: str, default: Any, optional: bool, regex: str | None) -> dict[str, Any]:
    if not help_text:
        raise ValueError(f"--{name} has no help text; add one where it is declared")
    if default not in (None, False, "", ()) and "default" not in help_text.lower():
        help_text += f" Default: {','.join(default) if isinstance(default, tuple) else default}."
    param: dict[str, Any] = {"name": name, "label": label_for(name), "helpText": help_text, "isOptional": optional}
    if regex is not None:
        param["regexes"] = [regex]
    return param


def setting_parameters() -> list[dict[str, Any]]:
    """One parameter per declared job setting, in the CLI's order."""
    sys.path.insert(0, str(ROOT))
    from common.settings import declared, pattern_for
    from pipelines.options import JOB_GROUPS

    params = []
    for item in (item for group in JOB_GROUPS for item in declared(group)):
        default = None if item.required or item.kind is bool else item.default  # a bool flag is off unless given
        params.append(_parameter(item.flag, item.spec.help, default, not item.required, pattern_for(item)))
    return params


def launch_parameters() -> list[dict[str, Any]]:
    """The entry module's own flags."""
    parser = argparse.ArgumentParser(add_help=False)
    entry = _load_entry_module()
    entry.add_launch_arguments(parser)
    return [
        _parameter(a.dest, a.help, a.default, True, entry.LAUNCH_PATTERNS[a.dest])
        for a in parser._actions
        if a.option_strings
    ]


def build_metadata() -> dict[str, Any]:
    launch = {p["name"]: p for p in launch_parameters()}
    params = [launch.pop(p["name"], p) for p in setting_parameters()] + list(launch.values())
    return {
        "name": "Gemma batch inference",
        "description": "Runs a Gemma model over JSONL/Parquet records in Cloud Storage (sentiment, classify or "
        "summarize) and writes typed results to Parquet/JSONL files or a date-partitioned BigQuery table.",
        "streaming": False,
        "supportsAtLeastOnce": False,
        "supportsExactlyOnce": True,
        "defaultStreamingMode": "UNSPECIFIED",
        "parameters": params,
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
