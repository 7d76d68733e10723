"""Failures stay small: a crashing batch is bisected to the bad record, a broken device fails the worker
instead, a failed calibration fails only the requests that need it, OOM shrinks the engine call, a retried
bundle leaves no duplicates."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from common.records import Record
from gemma_ops.sampling import SamplingParams
from inference.failures import DeviceFailure, is_device_failure, is_out_of_memory
from inference.handler import GemmaModelHandler
from inference.requests import RecordRequest, RecordResponse
from inference.runner import EngineRunner
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from pipelines.pipeline import build_pipeline
from pipelines.progress import summarize_run
from tests.matchers import untimed_responses
from tests.reliability.engines import (
    CRASH,
    BrokenDeviceEngine,
    CalibrationFailingEngine,
    CrashingEngine,
    OutOfMemoryEngine,
)
from tests.transforms.fakes import FakeEngine, fake_resolver
from transforms.classify import ClassifyTask
from transforms.registry import shortcut

FN_API = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
BUNDLE_RETRYING = "BundleBasedDirectRunner"
LABELS = ("positive", "negative", "neutral")


def crashing_factory(path, **kwargs) -> CrashingEngine:
    return CrashingEngine()


def handler_for(factory) -> GemmaModelHandler:
    return GemmaModelHandler(ModelSettings(model_copies=0), engine_factory=factory, model_resolver=fake_resolver)


SENTIMENT = shortcut("sentiment", calibrate=False)


def score(text: str) -> RecordRequest:
    return SENTIMENT.build_request(Record("r", text))


def test_a_crashing_batch_is_bisected_and_only_the_bad_request_fails():
    handler = handler_for(crashing_factory)
    model = handler.load_model()
    texts = ["great", "awful", f"{CRASH} here", "hours", "love it", "broken", f"again {CRASH}"]
    out = handler.run_inference([(i, score(t)) for i, t in enumerate(texts)], model)
    assert [k for k, _ in out] == list(range(7))
    failed = {k: r.error for k, r in out if r.error}
    assert failed == {2: "RuntimeError: index out of range in self", 6: "RuntimeError: index out of range in self"}
    assert [r.answers[0].logprobs for k, r in out if k == 0] == [(-4.0, -5.0, -5.0)]  # "great": one positive cue
    assert all(isinstance(r, RecordResponse) and r.model == "fake-gemma" for _, r in out)


def test_a_broken_device_fails_the_worker_instead_of_bisecting_the_batch():
    engine = BrokenDeviceEngine()
    handler = handler_for(lambda path, **kw: engine)
    model = handler.load_model()
    batch = [(i, score(t)) for i, t in enumerate(["great", "awful", "hours", "love", "broken", "ok", "x", "y"])]
    with pytest.raises(DeviceFailure, match=r"device-side assert triggered.*retries it on another worker"):
        handler.run_inference(batch, model)
    assert engine.calls == 1  # not 2N - 1 = 15 bisection calls, each failing
    with pytest.raises(DeviceFailure):  # the next batch fails at once: the device is not touched again
        handler.run_inference(batch[:2], model)
    assert engine.calls == 1


def test_a_broken_device_fails_the_job_and_publishes_nothing(tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": "great"}) + "\n" for i in range(4)))
    config = JobConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out"), run_id="r", max_error_rate=1)
    with pytest.raises(Exception, match=r"DeviceFailure|the accelerator failed"):
        run_job(config, handler_for(lambda path, **kw: BrokenDeviceEngine()))
    assert not glob.glob(str(tmp_path / "out" / "results-*")) and not glob.glob(str(tmp_path / "out" / "errors-*"))


def test_is_device_failure():
    assert is_device_failure(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_device_failure(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"))
    assert is_device_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_device_failure(DeviceFailure("gone"))
    assert not is_device_failure(RuntimeError("index out of range in self"))
    assert not is_device_failure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))


def test_a_calibration_failure_fails_only_the_requests_that_need_the_prior():
    engine = CalibrationFailingEngine()
    handler = handler_for(lambda path, **kw: engine)
    model = handler.load_model()
    calibrated = shortcut("sentiment")  # its calibration texts include "N/A", which this engine fails on
    requests = [calibrated.build_request(Record("c", t)) for t in ["great", "awful", "hours"]]
    requests[1:1] = [score("love it")]
    requests[3:3] = [score("broken")]
    out = handler.run_inference(list(enumerate(requests)), model)
    errors = {k: r.error for k, r in out if r.error}
    assert sorted(errors) == [0, 2, 4]
    assert errors[0] == (
        "scoring the label prior (content-free calibration prompt) failed: RuntimeError: kernel failed on the "
        "calibration prompt; rerun, or pass --no_calibration (calibrate: false in a task file) to use raw label "
        "scores"
    )
    assert [r.answers[0].logprobs for k, r in out if k in (1, 3)] == [(-4.0, -5.0, -5.0), (-5.0, -4.0, -5.0)]
    # one call scores the batch, one tries the prior once for the three requests that need it; no bisection
    assert engine.calls == 2


def test_out_of_memory_halves_the_engine_call_and_gives_the_same_results():
    params = SamplingParams(max_new_tokens=8)
    summarize = shortcut("summarize", max_new_tokens=params.max_new_tokens)
    requests = [summarize.build_request(Record("r", f"doc number {i} words")) for i in range(5)]
    requests += [score(t) for t in ["great", "awful", "hours", "love", "broken"]]
    expected = EngineRunner(FakeEngine(), ModelSettings(prompt_style="completion")).run(requests)
    engine = OutOfMemoryEngine(fits=2)
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion"))
    assert untimed_responses(runner.run(requests)) == untimed_responses(expected)
    # scoring 5 prompts runs out of memory; halved to 2 per call it fits (2 + 2 + 1); generate keeps the size
    assert engine.score_calls == [2, 2, 1] and engine.generate_calls == [2, 2, 1]
    assert engine.attempts[:2] == [5, 2] and runner.oom_retries == 1  # 5 -> 2; the smaller size sticks
    assert untimed_responses(runner.run(requests[:3])) == untimed_responses(expected[:3]) and engine.generate_calls[
        -2:
    ] == [2, 1]


def test_out_of_memory_on_a_single_request_is_that_request_s_dead_letter():
    handler = handler_for(lambda path, **kw: OutOfMemoryEngine(fits=0))
    model = handler.load_model()
    out = handler.run_inference([("a", score("great")), ("b", score("awful"))], model)
    assert [(k, r.error.split(".")[0]) for k, r in out] == [
        ("a", "OutOfMemoryError: CUDA out of memory"),
        ("b", "OutOfMemoryError: CUDA out of memory"),
    ]


def test_is_out_of_memory():
    import torch

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("device-side assert triggered"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an engine error type


def run_job(config: JobConfig, handler: GemmaModelHandler, runner: str = FN_API):
    pipeline = beam.Pipeline(runner=runner, options=PipelineOptions())
    outputs = build_pipeline(pipeline, config, handler=handler, progress=False)
    result = pipeline.run()
    result.wait_until_finish()
    return summarize_run(result, outputs.results_prefix, outputs.errors_prefix, 1.0)


def test_pipeline_dead_letters_only_the_crashing_record(tmp_path):
    lines = [{"id": f"r{i}", "text": t} for i, t in enumerate(["great", "awful", CRASH, "hours", "love"])]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    config = JobConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out"), run_id="r", max_error_rate=0.2)
    summary = run_job(config, handler_for(crashing_factory))
    rows = pq.ParquetDataset(list(summary.result_files)).read().to_pylist()
    assert sorted(r["id"] for r in rows) == ["r0", "r1", "r3", "r4"]
    errors = [json.loads(x) for f in summary.error_files for x in Path(f).read_text().splitlines()]
    assert [(e["id"], e["stage"], e["error"]) for e in errors] == [
        ("r2", "inference", "RuntimeError: index out of range in self")
    ]


def test_a_retried_bundle_leaves_no_duplicate_rows(tmp_path, monkeypatch):
    """The parse step fails once on record r3; BundleBasedDirectRunner retries the bundle like Dataflow."""
    marker = tmp_path / "failed-once"
    original = ClassifyTask.columns

    def flaky(self, answers):
        if answers[0].logprobs == (-5.0, -5.0, -3.0) and not marker.exists():  # "hours hours": two neutral cues
            marker.write_text("x")
            raise RuntimeError("worker lost (injected)")
        return original(self, answers)

    monkeypatch.setattr(ClassifyTask, "columns", flaky)
    texts = ["great", "awful", "love it", "hours hours", "broken", "excellent", "refund"]
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    config = JobConfig(
        input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out"), run_id="r", calibrate=False, num_shards=2
    )
    summary = run_job(config, handler_for(lambda path, **kw: FakeEngine()), runner=BUNDLE_RETRYING)
    assert marker.exists()  # the failure did happen
    ids = [r["id"] for r in pq.ParquetDataset(list(summary.result_files)).read().to_pylist()]
    assert sorted(ids) == [f"r{i}" for i in range(7)]
    assert len(summary.result_files) == 2 and not glob.glob(str(tmp_path / "out" / ".staging-*"))
    assert not glob.glob(str(tmp_path / "out" / "beam-temp-*"))
