"""What compiling the fused kernels (gemma_ops.fused) adds to the engine's start-up, cold and warm (not a test),
and what building the native decode attention (gemma_ops.native_attention) costs on a machine's first start.

Each figure comes from a fresh subprocess loading the embedded Gemma 3 270M (bfloat16, CPU, 2 threads):
``eager`` with compile_kernels=False; ``cold`` compiling into an empty Inductor cache (a temporary
TORCHINDUCTOR_CACHE_DIR, so no kernel is on disk yet); ``warm`` again on that cache, as every later process on a
machine starts (the default cache is /tmp/torchinductor_<user>; set TORCHINDUCTOR_CACHE_DIR to keep it elsewhere).

    python -m benchmarks.compile_startup [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.child import report, run_child
from gemma_ops.native_attention import load_decode_attention


def child(compile_kernels: bool, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    from gemma_ops import GemmaEngine, default_model_path

    start = time.perf_counter()
    engine = GemmaEngine.from_pretrained(
        default_model_path(), device="cpu", dtype="bfloat16", max_context=1024, compile_kernels=compile_kernels
    )
    load_s = time.perf_counter() - start
    failed = engine.model.kernels.failure
    return {"load_s": load_s, "compile_s": engine.compile_seconds, "fell_back": failed is not None}


def _spawn(compile_kernels: bool, threads: int, cache_dir: str) -> dict[str, float]:
    mode = "compile" if compile_kernels else "eager"
    args = ["--child", mode, "--threads", str(threads)]
    return run_child("benchmarks.compile_startup", args, {"TORCHINDUCTOR_CACHE_DIR": cache_dir})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["compile", "eager"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(child(args.child == "compile", args.threads))
        return
    print(f"engine start-up, embedded Gemma 3 270M, bfloat16, {args.threads} threads")
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, compile_kernels in (("eager", False), ("cold", True), ("warm", True)):
            r = _spawn(compile_kernels, args.threads, cache_dir)
            note = "  (compilation failed: eager fallback)" if r["fell_back"] else ""
            print(f"  {name:<6} load {r['load_s']:6.1f} s, of which compiling {r['compile_s']:5.1f} s{note}")
    with tempfile.TemporaryDirectory() as native_cache:  # the kernels' own cache, empty: a first build
        start = time.perf_counter()
        built = load_decode_attention(Path(native_cache)) is not None
        print(f"  native decode attention: {'built' if built else 'NOT built'} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
