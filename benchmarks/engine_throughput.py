"""Engine throughput against HF transformers `generate`, and `score` against generate-then-parse.

Each system runs in its own subprocess so its peak memory is its own. Prints a table of figures; not a test.

CPU (default): the embedded Gemma 3 270M, bfloat16, 2 threads, 48 prompts of 30-300 words, 32 new tokens,
greedy; HF one prompt at a time and HF in left-padded batches of 8. Then 200 short sentiment prompts scored
with `score` and with `generate` + parsing the first word.

GPU (`--device cuda`): random bfloat16 weights in the shape of google/gemma-2b, 1000 prompts of 512 random
tokens, 128 new tokens, against HF batched generate on the same weights. The engine's decode step runs as CUDA
graphs there by default (`--decode-graphs auto`; `off` for the dynamic step; `--systems engine,engine-dynamic`
runs both, one after the other); the table is followed by the mode and how many graphs were captured.

With --llama-cpp (CPU), llama.cpp's llama-batched-bench on the embedded model as a BF16 GGUF and the engine on
the same shape (48 prompts cut to 182 tokens, 32 new, ignore_eos), the engine run before and after it.

    python -m benchmarks.engine_throughput [--device cuda] [--systems engine,hf-batched] [--llama-cpp]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from benchmarks.child import report, run_child
from benchmarks.cost_split import cost_split, describe
from benchmarks.workload import gpu_prompts, random_gemma2b_checkpoint

LLAMA_SHAPE = (48, 182, 32)  # llama-batched-bench comparison: sequences, prompt tokens, new tokens (issue #14)
H100_BOUND_TOKENS_PER_S = 34_000  # issue #2: 1000 x (512 + 128) at batch 256, from 3.35 TB/s and 989 TFLOP/s


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ workloads
def _cpu_prompts(args) -> list[str]:
    from benchmarks.workload import passages

    return passages(args.prompts, 30, 300, seed=0)


def _model_path(args) -> Path:
    from gemma_ops import default_model_path

    if args.device == "cuda":
        return random_gemma2b_checkpoint(Path(args.scratch) / "gemma-2b-random")
    return default_model_path()


# -------------------------------------------------------------------------------------------- systems
def run_engine(args, decode_graphs: str | None = None) -> dict:
    """``decode_graphs``: auto, on or off (default: the --decode-graphs flag)."""
    from gemma_ops import GemmaEngine, SamplingParams

    prompts = gpu_prompts(args.prompts, args.prompt_tokens) if args.device == "cuda" else _cpu_prompts(args)
    engine = GemmaEngine.from_pretrained(
        _model_path(args),
        device=args.device,
        dtype=args.dtype,
        max_slots=args.max_slots,
        max_batch_tokens=args.max_batch_tokens,
        max_context=args.max_context,
        decode_graphs={"auto": None, "on": True, "off": False}[decode_graphs or args.decode_graphs],
    )
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=args.device == "cuda")
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    with cost_split(engine.model, lambda: _sync(args.device), engine.decoder) as split:
        outs = engine.generate(prompts, params)
    _sync(args.device)
    wall = time.perf_counter() - start
    stats = engine.decoder.stats
    return {
        "decode": f"{stats.mode}, {stats.graphs_captured} graphs captured ({stats.graphs_held} held), "
        f"{stats.steps} steps (warm-up included), {stats.padded_rows} padded rows",
        "output_tokens": sum(len(o.token_ids) for o in outs),
        "prompt_tokens": sum(o.prompt_tokens for o in outs),
        "wall_s": wall,
        "tokens": [list(o.token_ids) for o in outs],
        "split": split,
    }


def run_llama_shape(args) -> dict:
    """The engine on llama-batched-bench's shape: 48 prompts cut to 182 tokens, 32 new tokens, ignore_eos."""
    from benchmarks.engine_ab import llama_shape_prompts
    from gemma_ops import GemmaEngine, SamplingParams

    engine = GemmaEngine.from_pretrained(_model_path(args), device=args.device, dtype=args.dtype, max_context=1024)
    prompts = llama_shape_prompts(engine.tokenizer, LLAMA_SHAPE[0], LLAMA_SHAPE[1])
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up
    start = time.perf_counter()
    with cost_split(engine.model, decoder=engine.decoder) as split:
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=LLAMA_SHAPE[2], ignore_eos=True))
    wall = time.perf_counter() - start
    tokens = [list(o.token_ids) for o in outs]
    compile_s = engine.compile_seconds  # the fused kernels (gemma_ops.fused); benchmarks.compile_startup: cold/warm
    return {"output_tokens": sum(map(len, tokens)), "wall_s": wall, "split": split, "compile_s": compile_s}


def run_llama_cpp(args) -> dict:
    """llama-batched-bench on the same shape with the BF16 GGUF (built and converted on first use)."""
    from benchmarks import llama_cpp

    start = time.perf_counter()
    bin_dir = llama_cpp.build()
    gguf = llama_cpp.bf16_gguf(bin_dir)
    setup_s = time.perf_counter() - start
    sequences, prompt_tokens, new_tokens = LLAMA_SHAPE
    result = llama_cpp.batched_bench(bin_dir, gguf, sequences, prompt_tokens, new_tokens, args.threads)
    return {
        "output_tokens": sequences * new_tokens,
        "wall_s": result.total_s,
        "generate_rate": result.generate_rate,
        "prompt_rate": result.prompt_rate,
        "setup_s": setup_s,
    }


def _hf_model(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _model_path(args)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    return model, tokenizer


def run_hf(args, batch_size: int) -> dict:
    import torch

    model, tokenizer = _hf_model(args)
    if args.device == "cuda":
        prompt_ids = gpu_prompts(args.prompts, args.prompt_tokens)
        batches = [prompt_ids[i : i + batch_size] for i in range(0, len(prompt_ids), batch_size)]
        encode = lambda batch: {  # noqa: E731 (equal-length random prompts need no padding)
            "input_ids": torch.tensor(batch, device=args.device),
            "attention_mask": torch.ones(len(batch), len(batch[0]), dtype=torch.long, device=args.device),
        }
    else:
        prompts = _cpu_prompts(args)
        batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
        encode = lambda batch: tokenizer(batch, return_tensors="pt", padding=True).to(args.device)  # noqa: E731
    gen_kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if args.device == "cuda":
        gen_kwargs["min_new_tokens"] = args.new_tokens
    with torch.inference_mode():
        model.generate(**encode(batches[0][:1]), max_new_tokens=2, do_sample=False)  # warm-up
        _sync(args.device)
        start = time.perf_counter()
        tokens: list[list[int]] = []
        for batch in batches:
            inputs = encode(batch)
            out = model.generate(**inputs, **gen_kwargs)[:, inputs["input_ids"].shape[1] :]
            for row in out.tolist():
                tokens.append(_strip_after_eos(row, tokenizer))
        _sync(args.device)
        wall = time.perf_counter() - start
    return {"output_tokens": sum(len(t) for t in tokens), "wall_s": wall, "tokens": tokens}


def _strip_after_eos(row: list[int], tokenizer) -> list[int]:
    """HF pads finished rows with pad/EOS; count tokens up to and including the first EOS."""
    eos = tokenizer.eos_token_id
    return row[: row.index(eos) + 1] if eos in row else row


def run_scoring(args) -> dict:
    from benchmarks.workload import passages, sentiment_prompt
    from gemma_ops import GemmaEngine, SamplingParams

    engine = GemmaEngine.from_pretrained(_model_path(args), device=args.device, dtype=args.dtype)
    prompts = [sentiment_prompt(t) for t in passages(args.score_prompts, 8, 40, seed=1)]
    labels = [" positive", " negative", " neutral"]
    engine.score(prompts[:2], labels, restrict_vocab=True)
    figures = {}
    for name, kwargs in (("score_restricted", {"restrict_vocab": True}), ("score_full_vocab", {})):
        start = time.perf_counter()
        with cost_split(engine.model, lambda: _sync(args.device)) as split:
            engine.score(prompts, labels, **kwargs)
        figures[name] = len(prompts) / (time.perf_counter() - start)
        figures[f"{name}_split"] = split
    start = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=3))
    words = ("positive", "negative", "neutral")
    parsed = [next((w for w in o.text.lower().split() if w.strip(".,!") in words), None) for o in outs]
    figures["generate_then_parse"] = len(prompts) / (time.perf_counter() - start)
    figures["generate_parse_valid"] = sum(p is not None for p in parsed) / len(parsed)
    return figures


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


SYSTEMS = {
    "engine": run_engine,
    "engine-dynamic": lambda args: run_engine(args, "off"),  # the dynamic decode step, for an A/B with graphs
    "hf-single": lambda args: run_hf(args, 1),
    "hf-batched": lambda args: run_hf(args, args.hf_batch),
    "score": run_scoring,
    "llama-shape": run_llama_shape,
    "llama-cpp": run_llama_cpp,
}


# ---------------------------------------------------------------------------------------------- driver
def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = SYSTEMS[args.child](args)
    result["peak_mb"] = _peak_memory_mb(args.device)
    report(result)


def _rate(result: dict) -> float:
    return result["output_tokens"] / result["wall_s"]


def _spawn(system: str, argv: list[str]) -> dict:
    return run_child("benchmarks.engine_throughput", [*argv, "--child", system])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default="engine,hf-single,hf-batched,score", help="or none (with --llama-cpp)")
    parser.add_argument("--prompts", type=int, default=None, help="default: 48 (cpu) / 1000 (cuda)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 32 (cpu) / 128 (cuda)")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="cuda workload prompt length")
    parser.add_argument("--hf-batch", type=int, default=None, help="HF batch size; default 8 (cpu) / 64 (cuda)")
    parser.add_argument("--max-slots", type=int, default=None, help="engine slots; default 64 (cpu) / 256 (cuda)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="default 4096 (cpu) / 16384 (cuda)")
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument(
        "--decode-graphs",
        default="auto",
        choices=["auto", "on", "off"],
        help="engine decode step: auto = CUDA graphs "
        "on cuda, dynamic on cpu; on = static shapes (captured on cuda, eager on cpu); off = dynamic",
    )
    parser.add_argument("--score-prompts", type=int, default=200)
    parser.add_argument("--scratch", default="/tmp/gemma-bench")
    parser.add_argument(
        "--llama-cpp",
        action="store_true",
        help="also run llama.cpp's llama-batched-bench (built from the llama-cpp-python 0.3.36 sdist on first use, "
        "~6 min, cached in ~/.cache/gemma-beam/llama-cpp) against the engine on 48 x 182 prompt + 32 new tokens",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.prompts = args.prompts or (1000 if gpu else 48)
    args.new_tokens = args.new_tokens or (128 if gpu else 32)
    args.hf_batch = args.hf_batch or (64 if gpu else 8)
    args.max_slots = args.max_slots or (256 if gpu else 64)
    args.max_batch_tokens = args.max_batch_tokens or (16384 if gpu else 4096)
    if args.child:
        _child(args)
        return

    argv = [a for a in sys.argv[1:]]
    print(
        f"device={args.device} dtype={args.dtype} threads={args.threads} prompts={args.prompts} "
        f"new_tokens={args.new_tokens} model={'random gemma-2b shape' if gpu else 'embedded gemma-3-270m'}"
    )
    systems = [s for s in args.systems.split(",") if s not in ("", "none")]
    systems += ["llama-shape", "llama-cpp", "llama-shape"] if args.llama_cpp else []
    results: dict[str, dict] = {}
    for name in systems:
        result = _spawn(name, argv)
        if name in results:  # a second engine run on the llama shape (before and after llama.cpp): keep both
            result = {**result, "rates": [*results[name].get("rates", [_rate(results[name])]), _rate(result)]}
        results[name] = result
    gen = {k: v for k, v in results.items() if k not in ("score", "llama-shape", "llama-cpp")}
    if gen:
        print(f"\n{'system':<14} {'out tokens':>10} {'wall s':>8} {'tok/s':>8} {'engine x':>9} {'peak MB':>8}")
        engine_rate = gen["engine"]["output_tokens"] / gen["engine"]["wall_s"] if "engine" in gen else None
        for name, r in gen.items():
            rate = r["output_tokens"] / r["wall_s"]
            ratio = f"{engine_rate / rate:9.2f}" if engine_rate else f"{'-':>9}"
            print(f"{name:<14} {r['output_tokens']:>10} {r['wall_s']:>8.1f} {rate:>8.1f} {ratio} {r['peak_mb']:>8.0f}")
        if "engine" in gen and "hf-single" in gen:
            same = sum(a == b for a, b in zip(gen["engine"]["tokens"], gen["hf-single"]["tokens"], strict=True))
            print(
                f"engine greedy output identical to HF one-at-a-time on {same}/{len(gen['engine']['tokens'])} prompts"
            )
        if "engine" in gen:
            print(f"engine generation cost split: {describe(gen['engine']['split'])}")
            print(f"engine decode step: {gen['engine']['decode']}")
        if gpu and engine_rate:
            share = engine_rate / H100_BOUND_TOKENS_PER_S
            print(f"engine at {share:.1%} of the H100 bound ({H100_BOUND_TOKENS_PER_S} tok/s)")
    if args.llama_cpp:
        ours, theirs = results["llama-shape"], results["llama-cpp"]
        rates = ours["rates"]
        sequences, prompt_tokens, new_tokens = LLAMA_SHAPE
        print(f"\n{sequences} prompts x {prompt_tokens} tokens + {new_tokens} new (ignore_eos), {args.threads} threads")
        print(f"  engine     : {' / '.join(f'{r:.1f}' for r in rates)} tokens/s (runs before / after llama.cpp)")
        print(f"  engine cost split: {describe(ours['split'])}; compiling its kernels took {ours['compile_s']:.1f} s")
        print(
            f"  llama.cpp  : {_rate(theirs):.1f} tokens/s end to end (BF16 GGUF; "
            f"its S_TG {theirs['generate_rate']:.1f}, S_PP {theirs['prompt_rate']:.1f}; "
            f"setup {theirs['setup_s']:.0f} s)"
        )
        print(f"  engine / llama.cpp: {min(rates) / _rate(theirs):.2f}x (slower engine run)")
    if "score" in results:
        s = results["score"]
        print(f"\nscoring {args.score_prompts} short sentiment prompts (prompts/s):")
        print(f"  score, candidate rows only : {s['score_restricted']:8.1f}")
        print(f"  score, full vocabulary     : {s['score_full_vocab']:8.1f}")
        print(f"  scoring cost split (candidate rows only): {describe(s['score_restricted_split'])}")
        valid = s["generate_parse_valid"]
        print(f"  generate 3 tokens + parse  : {s['generate_then_parse']:8.1f}  (valid labels {valid:.0%})")
        print(f"  peak MB: {s['peak_mb']:.0f}")


if __name__ == "__main__":
    main()
