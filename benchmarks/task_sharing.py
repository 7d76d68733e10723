"""Several tasks in one pass: the cost of three scoring tasks over the same records against one (not a test).

Runs the pipeline's runner (the prompts, branching and engine calls a job makes) over N review-like records
with one classify task, then with a task file of three, and prints wall time and the tokens the model read.
Sharing the record's prefill means three tasks should cost far less than three times one (target: <= 1.5x).

    python -m benchmarks.task_sharing [--records 500] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common.records import Record
from transforms.registry import build_task_set
from transforms.task import TaskSet
from transforms.taskfile import parse_task_file

TASKS = [
    {"name": "mood", "kind": "classify", "labels": ["positive", "negative", "mixed"]},
    {"name": "topic", "kind": "classify", "labels": ["delivery", "product", "service", "price"]},
    {"name": "urgent", "kind": "classify", "question": "Needs a reply today:", "labels": ["yes", "no"]},
]


def task_set(count: int) -> TaskSet:
    return build_task_set(parse_task_file({"tasks": TASKS[:count]}, f"{count} task(s)"))


def run(runner: Any, tasks: TaskSet, records: list[Record], batch: int) -> float:
    """Seconds to answer every task for every record, in batches of ``batch`` requests (as RunInference does)."""
    start = time.perf_counter()
    for first in range(0, len(records), batch):
        responses = runner.run([tasks.build_request(r) for r in records[first : first + batch]])
        assert not any(r.error for r in responses), [r.error for r in responses if r.error][:1]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64, help="Requests per runner call.")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)

    from benchmarks.workload import passages
    from gemma_ops import GemmaEngine, default_model_path
    from inference.runner import EngineRunner

    engine = GemmaEngine.from_pretrained(default_model_path(), device="cpu", dtype=args.dtype)
    runner = EngineRunner(engine)
    records = [Record(f"r{i}", text) for i, text in enumerate(passages(args.records, 20, 80, seed=3))]
    run(runner, task_set(3), records[:8], args.batch)  # warm-up: heads, priors
    run(runner, task_set(1), records[:8], args.batch)
    print(f"{'tasks':>5} {'seconds':>8} {'records/s':>10} {'tokens read':>12} {'x one task':>11}")
    base_seconds = None
    for count in (1, 3):
        before = engine.tokens_fed
        seconds = run(runner, task_set(count), records, args.batch)
        base_seconds = base_seconds or seconds
        print(
            f"{count:>5} {seconds:>8.1f} {len(records) / seconds:>10.2f} {engine.tokens_fed - before:>12} "
            f"{seconds / base_seconds:>11.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
