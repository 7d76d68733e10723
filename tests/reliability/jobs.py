"""Running the whole pipeline in a test (a fake engine by default, or any handler), and reading back what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from pipelines.pipeline import build_pipeline
from pipelines.progress import RunSummary, summarize_run
from tests.transforms.fakes import fake_engine_factory, fake_resolver

FN_API = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def fake_handler(factory=fake_engine_factory) -> GemmaModelHandler:
    return GemmaModelHandler(ModelSettings(model_copies=0), engine_factory=factory, model_resolver=fake_resolver)


def run_job(
    config: JobConfig, handler: GemmaModelHandler | None = None, runner: str = FN_API, threads: int = 1
) -> RunSummary:
    """``threads``: the local runner's worker threads (RunInference batches in flight at once)."""
    threading = {"direct_num_workers": threads, "direct_running_mode": "multi_threading"} if threads > 1 else {}
    pipeline = beam.Pipeline(runner=runner, options=PipelineOptions(flags=[], **threading))
    outputs = build_pipeline(pipeline, config, handler=handler or fake_handler(), progress=False)
    result = pipeline.run()
    result.wait_until_finish()
    return summarize_run(result, outputs.results_prefix, outputs.errors_prefix, 1.0)


def result_rows(summary: RunSummary) -> list[dict]:
    files = list(summary.result_files)
    if files and files[0].endswith(".parquet"):
        return pq.ParquetDataset(files).read().to_pylist()
    return [json.loads(line) for f in files for line in Path(f).read_text().splitlines()]


def error_rows(summary: RunSummary) -> list[dict]:
    return [json.loads(line) for f in summary.error_files for line in Path(f).read_text().splitlines()]
