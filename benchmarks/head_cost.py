"""Inference cost of a classification head against label scoring, on the same records (not a test; prints figures).

Runs the pipeline's runner over N AG News dev articles with the AG News classify task twice per round,
interleaved: once scoring the four labels (with the calibration prior, cached after the first call, as a job
does), once with a head (one feature read per record, no label branches). Records/s of each and their ratio.
The head's weights do not change its cost: without --head a random head of the right shape is used.

    python -m benchmarks.head_cost [--records 64] [--rounds 2] [--head DIR] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.task_sharing import run  # answer every record in RunInference-sized batches
from common.records import Record
from transforms.registry import build_task_set
from transforms.taskfile import load_task_file

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"


def random_head(engine: Any, words: tuple[str, ...]) -> Any:
    import torch

    from gemma_ops.adapters import BaseModel
    from gemma_ops.adapters.head import ClassificationHead

    hidden = engine.model.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    return ClassificationHead(
        labels=words,
        pooling="last",
        weight=torch.randn(len(words), hidden, generator=generator) * 0.01,
        bias=torch.zeros(len(words)),
        mean=torch.zeros(hidden),
        scale=torch.ones(hidden),
        base=BaseModel("benchmark", "-"),
        hidden_size=hidden,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--head", help="A head folder from make tune (default: a random head of the right shape).")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)

    from gemma_ops import GemmaEngine, default_model_path
    from gemma_ops.adapters.head import load_head
    from inference.runner import EngineRunner

    tasks = build_task_set(
        load_task_file(str(ROOT / "benchmarks" / "tasks" / "agnews.yaml"), lambda p: Path(p).read_bytes())
    )
    rows = [json.loads(line) for line in (EVAL / "agnews_dev.jsonl").read_text().splitlines()][: args.records]
    records = [Record(row["id"], row["text"]) for row in rows]
    engine = GemmaEngine.from_pretrained(default_model_path(), device="cpu", dtype=args.dtype)
    words = tuple(label.word for label in tasks.tasks[0].labels)
    head = load_head(Path(args.head)) if args.head else random_head(engine, words)
    runners = {"label scoring": EngineRunner(engine), "head": EngineRunner(engine, head=head)}
    for runner in runners.values():  # warm-up: the shared prefix, the calibration prior
        run(runner, tasks, records[:4], args.batch)
    seconds = {name: 0.0 for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            seconds[name] += run(runner, tasks, records, args.batch)
    total = len(records) * args.rounds
    for name, spent in seconds.items():
        print(f"{name:<14} {total} records in {spent:6.1f} s: {total / spent:6.2f} records/s")
    print(f"head / label scoring: {seconds['label scoring'] / seconds['head']:.2f}x the records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
