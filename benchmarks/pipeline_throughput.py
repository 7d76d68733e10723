"""Records/s of the whole pipeline against the engine's own rate on the same records, per task.

    python -m benchmarks.pipeline_throughput --records 500 --task summarize,sentiment     (make bench-pipeline)

The engine figure runs the exact prompts the pipeline builds (same template, tokenization, labels or sampling
settings) in one engine call, after a warm-up: ``score`` for sentiment, ``generate`` for summarize (one call:
its slots refill until the last prompt is in). The pipeline figure is the local run of the real pipeline (read
JSONL -> RunInference -> Parquet) with ``--workers`` threads running RunInference batches at once, reported
with and without its one-off model load. The threads share the one serving engine (gemma_ops.engine_loop), so a
batch's freed slots refill with another batch's requests. Targets: summarize 90% of the engine's rate,
sentiment 70%.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from common.records import Record
from gemma_ops.engine import GemmaEngine
from inference.handler import GemmaModelHandler, build_engine, resolve_model_path
from inference.runner import EngineRunner
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from pipelines.pipeline import build_pipeline
from transforms.registry import shortcut

SAMPLE = Path(__file__).resolve().parents[1] / "sample.jsonl"
RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
TARGETS = {"sentiment": 0.70, "summarize": 0.90}


def make_records(n: int) -> list[dict]:
    """n distinct records built from sample.jsonl (a numbered variant of each text)."""
    base = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    records = []
    for i in range(n):
        source = base[i % len(base)]
        text = source["text"] if i < len(base) else f"{source['text']} (review {i // len(base)})"
        records.append({"id": f"b{i:05d}", "text": text})
    return records


def engine_rate(task_name: str, records: list[dict], model: str) -> tuple[float, float]:
    """(records/s, seconds) of one engine call over the pipeline's own prompts for ``task_name``."""
    engine = build_engine(resolve_model_path(model))
    runner = EngineRunner(engine)
    task = shortcut(task_name)
    template = task.templates[0]
    question = template.questions[0]
    requests = [task.build_request(Record(r["id"], r["text"])) for r in records]
    prompts = [runner.prompts.encode(r.fields, template).full(0) for r in requests]
    if question.scored:
        candidates = list(runner.prompts.candidates(template, 0))
        head = runner.prompts.head(template)  # the template's head, shared as in the pipeline
        call = lambda batch: engine.score(batch, candidates, restrict_vocab=True, shared_prefix=head)  # noqa: E731
    else:
        call = lambda batch: engine.generate(batch, question.params)  # noqa: E731
    call(prompts[:8])  # warm-up
    start = time.perf_counter()
    results = call(prompts)
    seconds = time.perf_counter() - start
    engine.close()
    assert len(results) == len(prompts) and not any(r.error for r in results)
    return len(records) / seconds, seconds


def plain_engine(path: Path, **engine_kwargs) -> GemmaEngine:
    """An engine that does not serve: the runner then runs RunInference calls one at a time, each to empty."""
    return GemmaEngine.from_pretrained(path, **engine_kwargs)


def pipeline_rate(
    task: str, records: list[dict], model: str, batch_max_tokens: int, workers: int, serve: bool = True
) -> tuple[float, float, float]:
    """(records/s excluding model load, wall seconds, model load seconds) of the whole pipeline; ``serve``
    False runs it without the engine loop, as before it existed."""
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        source = Path(folder) / "in.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in records))
        config = JobConfig(
            input=str(source),
            output=str(Path(folder) / "out"),
            model=model,
            task=task,
            batch_max_tokens=batch_max_tokens,
            model_copies=0,  # in-process, like the engine figure: no cross-process proxy
            run_id="bench",
        )
        options = PipelineOptions(flags=[], direct_num_workers=workers, direct_running_mode="multi_threading")
        pipeline = beam.Pipeline(runner=RUNNER, options=options)
        handler = None if serve else GemmaModelHandler(ModelSettings.of(config), engine_factory=plain_engine)
        build_pipeline(pipeline, config, handler, progress=False)
        start = time.perf_counter()
        result = pipeline.run()
        result.wait_until_finish()
        wall = time.perf_counter() - start
        loads = result.metrics().query(MetricsFilter().with_name("model_load_ms"))["distributions"]
        load_s = max((d.committed or d.attempted).max for d in loads) / 1000 if loads else 0.0
        files = [str(f) for f in (Path(folder) / "out").glob("results-*.parquet")]
        rows = pq.ParquetDataset(files).read().num_rows if files else 0
        if rows != len(records):
            raise RuntimeError(f"the pipeline wrote {rows} of {len(records)} rows; see the log above")
    return len(records) / max(wall - load_s, 1e-9), wall, load_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500, help="records to process (default 500)")
    parser.add_argument("--task", default="summarize,sentiment", help="comma-separated shortcut tasks")
    parser.add_argument("--model", default="embedded", help="--model value, as for the pipeline")
    parser.add_argument("--batch_max_tokens", type=int, default=4096, help="the pipeline's RunInference batches")
    parser.add_argument("--workers", type=int, default=4, help="threads running RunInference batches at once")
    parser.add_argument(
        "--without_loop", action="store_true", help="also run the pipeline on an engine that does not serve"
    )
    args = parser.parse_args()
    records = make_records(args.records)
    for task in args.task.split(","):
        engine_rps, engine_s = engine_rate(task, records, args.model)
        pipe_rps, wall, load_s = pipeline_rate(task, records, args.model, args.batch_max_tokens, args.workers)
        ratio, target = pipe_rps / engine_rps, TARGETS[task]
        print(f"{task}: {len(records)} records, {args.model}, {args.workers} RunInference threads")
        print(f"  engine, one call:        {engine_rps:8.2f} records/s ({engine_s:.1f} s)")
        print(f"  pipeline (FnApiRunner):  {pipe_rps:8.2f} records/s excluding a {load_s:.1f} s model load")
        print(f"  pipeline wall clock:     {len(records) / wall:8.2f} records/s ({wall:.1f} s with load and startup)")
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"  pipeline / engine:       {ratio:8.1%} ({verdict} the {target:.0%} target)", flush=True)
        if args.without_loop:
            plain_rps, _, _ = pipeline_rate(task, records, args.model, args.batch_max_tokens, args.workers, False)
            print(f"  without the engine loop: {plain_rps:8.2f} records/s, {plain_rps / engine_rps:.1%} of the engine")


if __name__ == "__main__":
    main()
