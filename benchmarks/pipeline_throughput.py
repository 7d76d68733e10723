"""Records/s of the whole sentiment pipeline against the engine's own score() rate on the same records.

    python -m benchmarks.pipeline_throughput --records 500          (make bench-pipeline)

The engine figure scores the exact prompts the pipeline builds (same template, tokenization and labels) in
one engine.score call, after a warm-up. The pipeline figure is the DirectRunner run of the real pipeline
(read JSONL -> RunInference -> Parquet), reported with and without its one-off model load. Target: the
pipeline reaches at least 70% of the engine's rate.
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
from inference.handler import build_engine, resolve_model_path
from inference.runner import EngineRunner
from pipelines.options import JobConfig
from pipelines.pipeline import build_pipeline
from transforms.registry import shortcut

SAMPLE = Path(__file__).resolve().parents[1] / "sample.jsonl"
RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
TARGET = 0.70


def make_records(n: int) -> list[dict]:
    """n distinct records built from sample.jsonl (a numbered variant of each text)."""
    base = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    records = []
    for i in range(n):
        source = base[i % len(base)]
        text = source["text"] if i < len(base) else f"{source['text']} (review {i // len(base)})"
        records.append({"id": f"b{i:05d}", "text": text})
    return records


def engine_rate(records: list[dict], model: str, batch_max_tokens: int) -> tuple[float, float]:
    """(records/s, seconds) of engine.score over the pipeline's own prompts."""
    engine = build_engine(resolve_model_path(model), max_batch_tokens=batch_max_tokens)
    runner = EngineRunner(engine)
    task = shortcut("sentiment")
    template = task.templates[0]
    requests = [task.build_request(Record(r["id"], r["text"])) for r in records]
    candidates = list(runner.prompts.candidates(template, 0))
    prompts = [runner.prompts.encode(r.fields, template).full(0) for r in requests]
    head = runner.prompts.head(template)  # the template's head, shared as in the pipeline
    engine.score(prompts[:8], candidates, restrict_vocab=True, shared_prefix=head)  # warm-up
    start = time.perf_counter()
    results = engine.score(prompts, candidates, restrict_vocab=True, shared_prefix=head)
    seconds = time.perf_counter() - start
    assert len(results) == len(prompts) and not any(r.error for r in results)
    return len(records) / seconds, seconds


def pipeline_rate(records: list[dict], model: str, batch_max_tokens: int) -> tuple[float, float, float]:
    """(records/s excluding model load, wall seconds, model load seconds) of the whole pipeline."""
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        source = Path(folder) / "in.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in records))
        config = JobConfig(
            input=str(source),
            output=str(Path(folder) / "out"),
            model=model,
            batch_max_tokens=batch_max_tokens,
            model_copies=0,  # in-process, like the engine figure: no cross-process proxy
            run_id="bench",
        )
        pipeline = beam.Pipeline(runner=RUNNER, options=PipelineOptions())
        build_pipeline(pipeline, config, progress=False)
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
    parser.add_argument("--model", default="embedded", help="--model value, as for the pipeline")
    parser.add_argument("--batch_max_tokens", type=int, default=4096, help="tokens per batch, both sides")
    args = parser.parse_args()
    records = make_records(args.records)

    engine_rps, engine_s = engine_rate(records, args.model, args.batch_max_tokens)
    pipe_rps, wall, load_s = pipeline_rate(records, args.model, args.batch_max_tokens)
    ratio = pipe_rps / engine_rps
    print(f"records:               {len(records)} (sentiment, {args.model})")
    print(f"engine score():        {engine_rps:8.2f} records/s ({engine_s:.1f} s)")
    print(f"pipeline (DirectRunner): {pipe_rps:6.2f} records/s excluding a {load_s:.1f} s model load")
    print(f"pipeline wall clock:   {len(records) / wall:8.2f} records/s ({wall:.1f} s including load and startup)")
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"pipeline / engine:     {ratio:8.1%} ({verdict} the {TARGET:.0%} target)")


if __name__ == "__main__":
    main()
