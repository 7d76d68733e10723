"""Accuracy of task-file variants on the development sets in ../shared/eval (not a test; prints a table).

For AG News (4 topics) and tweet sentiment (3 classes), over each dev split:
- zero-shot: the labels alone (the classify defaults);
- descriptions: each label with a one-line description, written before any run and not tuned;
- 5 per class: five training-pool examples per label in the prompt (the first five of each label by id,
  interleaved by label);
and, for tweets, the shipped --task sentiment shortcut. Calibration is on, as by default.

    python -m benchmarks.task_accuracy [--datasets agnews,tweeteval] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common.quality import quality
from common.records import Record
from transforms.registry import build_task_set, shortcut
from transforms.task import TaskSet
from transforms.taskfile import parse_task_file

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
DATASETS: dict[str, dict[str, Any]] = {
    "agnews": {
        "labels": ["world", "sports", "business", "technology"],
        "descriptions": {
            "world": "international news, politics, governments, wars and diplomacy",
            "sports": "games, matches, athletes, teams and competitions",
            "business": "companies, markets, the economy, trade and finance",
            "technology": "computers, the internet, software, science and space",
        },
        "instructions": "Which section of a news site does each article belong to: {labels}?",
        "question": "Section:",
        "input_label": "Article",
    },
    "tweeteval": {
        "labels": ["positive", "negative", "neutral"],
        "descriptions": {
            "positive": "praise, joy, excitement, approval or good wishes",
            "negative": "complaints, anger, sadness, fear or disapproval",
            "neutral": "facts, news, questions or plans with no clear feeling",
        },
        "instructions": "What feeling does each tweet express: {labels}?",
        "question": "Feeling:",
        "input_label": "Tweet",
    },
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def variant(dataset: str, name: str) -> TaskSet:
    spec = DATASETS[dataset]
    labels: list[Any] = list(spec["labels"])
    task: dict[str, Any] = {
        "name": "label",
        "kind": "classify",
        "instructions": spec["instructions"],
        "question": spec["question"],
        "labels": labels,
    }
    if name == "descriptions":
        task["labels"] = [{"name": label, "description": spec["descriptions"][label]} for label in labels]
    elif name == "5 per class":
        pool = sorted(read_jsonl(EVAL / f"{dataset}_train.jsonl"), key=lambda row: row["id"])
        by_label = {label: [r for r in pool if r["label"] == label][:5] for label in labels}
        # Interleaved (a, b, c, a, b, c, ...): grouped by label, the last label's examples would sit next to
        # the record and pull the answer towards it (recency bias).
        task["examples"] = [{"text": by_label[label][i]["text"], "label": label} for i in range(5) for label in labels]
    elif name != "zero-shot":
        raise ValueError(f"unknown variant {name!r}")
    raw = {"input_label": spec["input_label"], "tasks": [task]}
    return build_task_set(parse_task_file(raw, f"{dataset}/{name}"))


def predict(runner: Any, tasks: TaskSet, rows: list[dict[str, Any]], column: str) -> tuple[list[str], float]:
    """Each row's predicted label through the runner the pipeline uses, and the seconds it took."""
    start = time.perf_counter()
    predicted = []
    for first in range(0, len(rows), 32):
        chunk = rows[first : first + 32]
        records = [Record(row["id"], row["text"]) for row in chunk]
        responses = runner.run([tasks.build_request(record) for record in records])
        pairs = zip(records, responses, strict=True)
        predicted += [tasks.to_row(r, response, "bench", tasks.fingerprint())[column] for r, response in pairs]
    return predicted, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="agnews,tweeteval")
    parser.add_argument("--limit", type=int, default=0, help="Use only the first N dev rows (0: all).")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)

    from gemma_ops import GemmaEngine, default_model_path
    from inference.runner import EngineRunner

    runner = EngineRunner(GemmaEngine.from_pretrained(default_model_path(), device="cpu", dtype=args.dtype))
    print(f"{'dataset':<10} {'variant':<14} {'n':>4} {'accuracy':>9} {'macro-F1':>9} {'recall':>7} {'s':>6}")
    for dataset in args.datasets.split(","):
        rows = read_jsonl(EVAL / f"{dataset}_dev.jsonl")[: args.limit or None]
        gold = [row["label"] for row in rows]
        variants = [
            (name, variant(dataset, name), "label_label") for name in ("zero-shot", "descriptions", "5 per class")
        ]
        if dataset == "tweeteval":
            variants.append(("--task sentiment", shortcut("sentiment"), "label"))
        for name, tasks, column in variants:
            predicted, seconds = predict(runner, tasks, rows, column)
            result = quality(gold, predicted, DATASETS[dataset]["labels"])
            print(
                f"{dataset:<10} {name:<14} {result.count:>4} {result.accuracy:>9.3f} {result.macro_f1:>9.3f} "
                f"{result.macro_recall:>7.3f} {seconds:>6.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
