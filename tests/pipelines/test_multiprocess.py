"""One model per machine: a two-process DirectRunner run loads the model once with model_copies=1, and
once per process with model_copies=None (Beam's per-process default). Loads are counted by marker files
that the handler writes when GEMMA_BEAM_LOAD_MARKER_DIR is set."""

from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from gemma_ops.handler import LOAD_MARKER_ENV, GemmaModelHandler
from tests.tiny_models import build_tiny_checkpoint
from transforms.base import InferTask, Record
from transforms.sentiment import SentimentTask

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_checkpoint("gemma3", tmp_path_factory.mktemp("tiny-mp") / "gemma3")


def _touch(folder: str, element) -> None:
    Path(folder, f"infer-{os.getpid()}").touch()


def run_two_processes(model: Path, markers: Path, model_copies: int | None) -> tuple[int, int, int]:
    """(model loads, processes that ran inference, rows) for a 2-worker multi-processing run."""
    options = PipelineOptions(direct_running_mode="multi_processing", direct_num_workers=2)
    handler = GemmaModelHandler(
        model=str(model), device="cpu", dtype="float32", batch_max_tokens=200, model_copies=model_copies
    )
    records = [Record(f"r{i}", f"review number {i}: it was fine") for i in range(40)]
    rows_dir = markers / "rows"
    rows_dir.mkdir()
    with beam.Pipeline(runner=RUNNER, options=options) as p:
        rows, _ = p | beam.Create(records) | beam.Reshuffle() | InferTask(SentimentTask(), handler, "mp")
        _ = rows | beam.Map(lambda row: Path(rows_dir, row["id"]).touch() or _touch(str(markers), row))
    loads = len(list(markers.glob("load-*")))
    inference_processes = len(list(markers.glob("infer-*")))
    return loads, inference_processes, len(list(rows_dir.iterdir()))


def test_shared_model_is_loaded_once_per_machine(tiny_model, tmp_path, monkeypatch):
    shared_markers = tmp_path / "shared"
    monkeypatch.setenv(LOAD_MARKER_ENV, str(shared_markers))
    shared_markers.mkdir()
    loads, processes, rows = run_two_processes(tiny_model, shared_markers, model_copies=1)
    assert rows == 40
    assert processes == 2, "both SDK processes should have run inference"
    assert loads == 1

    own_markers = tmp_path / "per-process"
    own_markers.mkdir()
    monkeypatch.setenv(LOAD_MARKER_ENV, str(own_markers))
    loads, processes, rows = run_two_processes(tiny_model, own_markers, model_copies=None)
    assert rows == 40 and processes == 2
    assert loads == 2  # without sharing, every SDK process loads its own copy
