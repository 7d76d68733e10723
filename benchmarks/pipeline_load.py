"""Load: the whole pipeline over 10,000 and 100,000 synthetic records with a fast fake engine.

    python -m benchmarks.pipeline_load                       (10k, then 100k; about 10 minutes on 2 cores)
    python -m benchmarks.pipeline_load --sizes 2000 20000    (a quick look)

The real pipeline (read JSONL -> requests -> RunInference -> rows -> Parquet + dead letters -> accounting ->
publish) on the DirectRunner in multi-process mode (FnApiRunner, ``direct_running_mode=multi_processing``,
two SDK worker processes); only the engine is fake, and fast, so the figures are the pipeline's own cost.
1% of the lines are malformed JSON, so the dead-letter path carries load too. For each size it checks that
every line is accounted for in the published files (results + dead letters = lines) and prints the wall
time, records/s and the peak memory of the whole process tree (this process plus its workers, sampled every
0.2 s). No step may grow faster than the data: the 100k/10k time ratio should stay near 10 and the peak
memory near flat. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import psutil
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from gemma_ops.outputs import Completion, ScoreResult
from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from pipelines.pipeline import build_pipeline

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
WORKERS = 2
BAD_EVERY = 100  # one malformed line in a hundred: 1% dead letters, well under --max_error_rate
WORDS = ("the", "order", "arrived", "late", "but", "support", "was", "kind", "refund", "came", "great", "awful")


class FastTokenizer:
    """One token per character: exact and cheap."""

    has_chat_template = False

    def encode(self, text: str, add_bos: bool = True, allow_special: bool = True) -> list[int]:
        return ([2] if add_bos else []) + [ord(c) % 30000 + 10 for c in text]

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, allow_special: bool = True) -> list[list[int]]:
        return [self.encode(t, add_bos, allow_special) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 10) for i in ids if i >= 10)

    def chat_prompt(self, user_text: str) -> str:
        return user_text


class FastEngine:
    """Answers instantly: scores from the prompt's length, a three-token completion."""

    def __init__(self) -> None:
        self.tokenizer = FastTokenizer()
        self.max_context = 4096
        self.model_name = "fast-fake"

    def score(self, prompts, candidates, *, restrict_vocab: bool = False, shared_prefix=None) -> list[ScoreResult]:
        return [ScoreResult(tuple(-float((len(p) + i) % 7) for i in range(len(candidates))), len(p)) for p in prompts]

    def generate(self, prompts, params) -> list[Completion]:
        return [Completion(" fine", (1, 2, 3), "stop", len(p)) for p in prompts]


def fast_engine_factory(path: Path, **kwargs) -> FastEngine:
    return FastEngine()


def no_checkpoint(model: str) -> Path:
    return Path("/nonexistent") / model


def write_input(path: Path, lines: int) -> int:
    """``lines`` JSONL lines, every BAD_EVERY-th malformed; returns how many are good records."""
    good = 0
    with path.open("w") as handle:
        for i in range(lines):
            if i % BAD_EVERY == BAD_EVERY - 1:
                handle.write("{not json\n")
                continue
            text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12 + i % 20))
            handle.write(json.dumps({"id": f"r{i}", "text": f"{text} (review {i})", "stars": i % 5}) + "\n")
            good += 1
    return good


class PeakMemory:
    """Peak RSS of this process (the runner, which holds the local shuffle's buffers) and of the sum of its
    descendants (the SDK workers), sampled in a thread; also the most workers seen at once."""

    def __init__(self, every: float = 0.2) -> None:
        self._every = every
        self._stop = threading.Event()
        self.runner = 0
        self.workers = 0
        self.total = 0
        self.processes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        runner, workers, seen = me.memory_info().rss, 0, 0
        for child in me.children(recursive=True):
            try:
                workers += child.memory_info().rss
                seen += child.name() != "sh"  # Beam starts each SDK worker through /bin/sh -c
            except psutil.Error:  # a worker that just exited
                continue
        self.runner, self.workers = max(self.runner, runner), max(self.workers, workers)
        self.total, self.processes = max(self.total, runner + workers), max(self.processes, seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class LoadResult:
    lines: int
    rows: int
    errors: int
    seconds: float
    memory: PeakMemory


def run_once(lines: int, folder: Path) -> LoadResult:
    source = folder / "in.jsonl"
    good = write_input(source, lines)
    config = JobConfig(input=str(source), output=str(folder / "out"), run_id=f"load-{lines}")
    handler = GemmaModelHandler(
        ModelSettings(model_copies=0), engine_factory=fast_engine_factory, model_resolver=no_checkpoint
    )
    options = PipelineOptions(direct_running_mode="multi_processing", direct_num_workers=WORKERS)
    pipeline = beam.Pipeline(runner=RUNNER, options=options)
    build_pipeline(pipeline, config, handler=handler, progress=False)
    with PeakMemory() as memory:
        start = time.perf_counter()
        pipeline.run().wait_until_finish()
        seconds = time.perf_counter() - start
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (folder / "out").glob("results-*.parquet"))
    errors = sum(1 for p in (folder / "out").glob("errors-*.jsonl") for line in p.open() if line.strip())
    if rows != good or rows + errors != lines:
        raise RuntimeError(f"{lines} lines but {rows} rows + {errors} dead letters (expected {good} rows)")
    return LoadResult(lines, rows, errors, seconds, memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="input lines per run")
    args = parser.parse_args()
    results = []
    for lines in args.sizes:
        with tempfile.TemporaryDirectory(prefix="load-", dir="/tmp") as folder:
            result = run_once(lines, Path(folder))
        results.append(result)
        memory = result.memory
        print(
            f"{result.lines:>8} lines: {result.rows} rows + {result.errors} dead letters (all accounted for) "
            f"in {result.seconds:6.1f} s = {result.lines / result.seconds:5.0f} records/s; peak memory "
            f"{mib(memory.total)} in all = runner {mib(memory.runner)} + {memory.processes} SDK workers "
            f"{mib(memory.workers)}",
            flush=True,
        )
    if len(results) >= 2:
        first, last = results[0], results[-1]
        print(
            f"{last.lines}/{first.lines} lines = {last.lines / first.lines:.1f}x: "
            f"time {last.seconds / first.seconds:.1f}x, peak memory {last.memory.total / first.memory.total:.2f}x "
            f"(runner {last.memory.runner / first.memory.runner:.2f}x, "
            f"workers {last.memory.workers / first.memory.workers:.2f}x)"
        )


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


if __name__ == "__main__":
    main()
