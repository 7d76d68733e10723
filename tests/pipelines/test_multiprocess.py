"""One model per machine: a two-process DirectRunner run loads the model once with model_copies=1, and
once per process with model_copies=0 (Beam's per-process default). Loads are counted by marker files that
the test's engine factory writes (it wraps the real one), so production code carries no test hook."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from common.records import Record
from inference.handler import GemmaModelHandler, build_engine
from inference.settings import ModelSettings
from tests.tiny_models import build_tiny_checkpoint
from transforms.infer import InferTask
from transforms.registry import shortcut

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_checkpoint("gemma3", tmp_path_factory.mktemp("tiny-mp") / "gemma3")


def counting_engine_factory(markers: str, path: Path, **kwargs):
    """The real engine factory, leaving one marker file per load (runs in whichever process loads)."""
    Path(markers, f"load-{os.getpid()}-{uuid.uuid4().hex[:8]}").touch()
    return build_engine(path, **kwargs)


def _touch(folder: str, element) -> None:
    Path(folder, f"infer-{os.getpid()}").touch()


def run_two_processes(model: Path, markers: Path, model_copies: int) -> tuple[int, int, int]:
    """(model loads, processes that ran inference, rows) for a 2-worker multi-processing run."""
    options = PipelineOptions(direct_running_mode="multi_processing", direct_num_workers=2)
    settings = ModelSettings(
        model=str(model), device="cpu", dtype="float32", batch_max_tokens=200, model_copies=model_copies
    )
    handler = GemmaModelHandler(settings, engine_factory=functools.partial(counting_engine_factory, str(markers)))
    records = [Record(f"r{i}", f"review number {i}: it was fine") for i in range(40)]
    rows_dir = markers / "rows"
    rows_dir.mkdir()
    with beam.Pipeline(runner=RUNNER, options=options) as p:
        rows, _ = p | beam.Create(records) | beam.Reshuffle() | InferTask(shortcut("sentiment"), handler, "mp", "fp")
        _ = rows | beam.Map(lambda row: Path(rows_dir, row["id"]).touch() or _touch(str(markers), row))
    loads = len(list(markers.glob("load-*")))
    inference_processes = len(list(markers.glob("infer-*")))
    return loads, inference_processes, len(list(rows_dir.iterdir()))


def test_shared_model_is_loaded_once_per_machine(tiny_model, tmp_path):
    shared_markers = tmp_path / "shared"
    shared_markers.mkdir()
    loads, processes, rows = run_two_processes(tiny_model, shared_markers, model_copies=1)
    assert rows == 40
    assert processes == 2, "both SDK processes should have run inference"
    assert loads == 1

    own_markers = tmp_path / "per-process"
    own_markers.mkdir()
    loads, processes, rows = run_two_processes(tiny_model, own_markers, model_copies=0)
    assert rows == 40 and processes == 2
    assert loads == 2  # without sharing, every SDK process loads its own copy
