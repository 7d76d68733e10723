"""What constrained decoding costs, and what it buys (not a test).

Runs the extract example (docs/examples/ticket_extract.yaml) over N support-ticket records (docs/examples/
support_tickets.jsonl, cycled) twice on the same engine, in interleaved chunks: constrained by the schema, and
free (greedy until a new line). Prints output tokens/s of each (target: constrained costs <= 20%), the time spent
filling and applying token masks, and the validity rate of each: the share of records whose output parses and
validates into a row (the rest would be parse dead letters).

    python -m benchmarks.extract_overhead [--records 200] [--chunk 50] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from inference.requests import Answer
from transforms.registry import build_task_set
from transforms.taskfile import parse_task_file

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def records(count: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in (EXAMPLES / "support_tickets.jsonl").read_text().splitlines()]
    return [texts[i % len(texts)] for i in range(count)]


def valid(task: Any, completion: Any) -> bool:
    try:
        task.columns((Answer(text=completion.text, finish_reason=completion.finish_reason),))
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=50, help="Records per generate call; arms alternate by chunk.")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    from gemma_ops import GemmaEngine, default_model_path
    from inference.prompts import PromptEncoder

    spec = yaml.safe_load((EXAMPLES / "ticket_extract.yaml").read_text())
    tasks = build_task_set(parse_task_file(spec, "ticket_extract.yaml"))
    (task,) = tasks.tasks
    (template,) = tasks.templates
    engine = GemmaEngine.from_pretrained(default_model_path(), device="cpu", dtype=args.dtype)
    encoder = PromptEncoder(engine.tokenizer, engine.max_context, "completion")
    prompts = [encoder.encode({"text": text}, template).full(0) for text in records(args.records)]
    arms = {
        "constrained": task.params,
        "free": replace(task.params, json_schema=None, stop=("\n",)),
    }
    started = time.perf_counter()
    engine.generate(prompts[:2], arms["constrained"])  # warm-up; builds the tokenizer's token table once
    print(f"first constrained call (token table + compile + 2 records): {time.perf_counter() - started:.1f} s")
    engine.generate(prompts[:2], arms["free"])
    totals = {arm: {"seconds": 0.0, "tokens": 0, "valid": 0} for arm in arms}
    mask_before = engine.mask_seconds
    for first in range(0, len(prompts), args.chunk):
        chunk = prompts[first : first + args.chunk]
        order = list(arms) if (first // args.chunk) % 2 == 0 else list(reversed(arms))
        for arm in order:
            start = time.perf_counter()
            outs = engine.generate(chunk, arms[arm])
            totals[arm]["seconds"] += time.perf_counter() - start
            totals[arm]["tokens"] += sum(len(out.token_ids) for out in outs)
            totals[arm]["valid"] += sum(valid(task, out) for out in outs)
    mask = engine.mask_seconds - mask_before
    print(
        f"{len(prompts)} records, chunks of {args.chunk}, dtype {args.dtype}, "
        f"max_new_tokens {task.params.max_new_tokens}"
    )
    print(f"{'arm':>12} {'seconds':>8} {'out tokens':>10} {'tokens/s':>9} {'valid':>7}")
    for arm, t in totals.items():
        rate = t["tokens"] / t["seconds"]
        print(f"{arm:>12} {t['seconds']:>8.1f} {t['tokens']:>10} {rate:>9.2f} {t['valid'] / len(prompts):>7.1%}")
    c, f = totals["constrained"], totals["free"]
    overhead = (f["tokens"] / f["seconds"]) / (c["tokens"] / c["seconds"]) - 1
    print(f"overhead (free tokens/s / constrained tokens/s - 1): {overhead:+.1%}  (target <= +20%)")
    print(f"mask fill + apply: {mask:.2f} s = {mask / c['seconds']:.1%} of constrained time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
