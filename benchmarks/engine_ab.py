"""The engine at two versions of gemma_ops, A (a git ref) against B (the working tree), run alternately (not a test).

B is a copy of the working tree's gemma_ops taken at the start.

On a shared machine the load changes from minute to minute, so a before/after figure taken in two runs compares
loads as much as code. Here each round runs A then B, each in a fresh subprocess on the same inputs, and the table
gives every round's rates and the B/A ratio; the median ratio is the figure to quote.

    python -m benchmarks.engine_ab [--before main] [--rounds 2] [--workloads bench,llama-shape,score]

Workloads (the embedded Gemma 3 270M, bfloat16, 2 threads): ``bench`` is make bench's generation workload (48
prompts of 30-300 words, 32 new tokens, greedy); ``llama-shape`` the llama.cpp comparison (48 prompts cut to 182
tokens, 32 new, ignore_eos); ``score`` 200 short sentiment prompts scored over three labels (candidate rows only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from benchmarks.child import report, run_child

REPO = Path(__file__).resolve().parent.parent
LABELS = [" positive", " negative", " neutral"]


def export_ref(ref: str, into: Path) -> Path:
    """gemma_ops as it is at ``ref``, unpacked under ``into`` (to put first on PYTHONPATH)."""
    archive = subprocess.run(["git", "archive", ref, "gemma_ops"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def llama_shape_prompts(tokenizer, count: int = 48, length: int = 182) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` token ids (BOS included): long passages cut to the length."""
    from benchmarks.workload import passages

    texts = passages(count, 250, 300, seed=0)
    return [ids[:length] for ids in tokenizer.encode_batch(texts)]


def run_workloads(names: list[str], threads: int) -> dict[str, dict[str, float]]:
    """Time each workload once after a warm-up, in this process: rate (tokens/s or prompts/s) and wall seconds."""
    import torch

    from benchmarks.workload import passages, sentiment_prompt
    from gemma_ops import GemmaEngine, SamplingParams, default_model_path

    torch.set_num_threads(threads)
    engine = GemmaEngine.from_pretrained(default_model_path(), device="cpu", dtype="bfloat16", max_context=1024)
    engine.generate(passages(2, 30, 60, seed=3), SamplingParams(max_new_tokens=2))  # warm-up
    figures: dict[str, dict[str, float]] = {}
    for name in names:
        if name == "score":
            prompts = [sentiment_prompt(t) for t in passages(200, 8, 40, seed=1)]
            start = time.perf_counter()
            engine.score(prompts, LABELS, restrict_vocab=True)
            wall = time.perf_counter() - start
            figures[name] = {"rate": len(prompts) / wall, "wall_s": wall}
            continue
        if name == "bench":
            prompts, params = passages(48, 30, 300, seed=0), SamplingParams(max_new_tokens=32)
        elif name == "llama-shape":
            prompts = llama_shape_prompts(engine.tokenizer)
            params = SamplingParams(max_new_tokens=32, ignore_eos=True)
        else:
            raise ValueError(f"unknown workload {name!r}; choose from bench, llama-shape, score")
        start = time.perf_counter()
        outs = engine.generate(prompts, params)
        wall = time.perf_counter() - start
        figures[name] = {"rate": sum(len(o.token_ids) for o in outs) / wall, "wall_s": wall}
    return figures


def _spawn(path_first: Path, names: list[str], threads: int) -> dict[str, dict[str, float]]:
    args = ["--child", ",".join(names), "--threads", str(threads)]
    return run_child("benchmarks.engine_ab", args, {"ENGINE_AB_FIRST": str(path_first)}, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="main", help="git ref of version A (B is the working tree)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workloads", default="bench,llama-shape,score")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    if args.child:
        if os.environ.get("ENGINE_AB_FIRST"):  # ahead of the working tree (python -m puts the cwd first)
            sys.path.insert(0, os.environ["ENGINE_AB_FIRST"])
        import gemma_ops

        print(f"gemma_ops from {gemma_ops.__file__}", file=sys.stderr)
        report(run_workloads(args.child.split(","), args.threads))
        return
    print(f"A = {args.before}, B = working tree; {args.rounds} rounds of A then B; threads={args.threads}")
    ratios: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        before = export_ref(args.before, Path(scratch) / "a")
        after = Path(scratch) / "b"  # a copy, so edits made while it runs do not change B
        shutil.copytree(REPO / "gemma_ops", after / "gemma_ops", ignore=shutil.ignore_patterns("__pycache__"))
        for round_ in range(args.rounds):
            a = _spawn(before, names, args.threads)
            print(f"round {round_ + 1} A: " + ", ".join(f"{k} {v['rate']:.1f}" for k, v in a.items()), flush=True)
            b = _spawn(after, names, args.threads)
            for name in names:
                ratio = b[name]["rate"] / a[name]["rate"]
                ratios[name].append(ratio)
                unit = "prompts/s" if name == "score" else "tokens/s"
                print(
                    f"round {round_ + 1} {name:<12} A {a[name]['rate']:7.1f} {unit} ({a[name]['wall_s']:.1f} s)  "
                    f"B {b[name]['rate']:7.1f} ({b[name]['wall_s']:.1f} s)  B/A {ratio:.2f}",
                    flush=True,
                )
    for name in names:
        print(f"{name:<12} median B/A {statistics.median(ratios[name]):.2f} over {args.rounds} rounds")


if __name__ == "__main__":
    main()
