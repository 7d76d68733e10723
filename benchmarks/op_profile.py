"""Where the engine's time goes, per op, on the engine benchmark workload and on the scoring path (not a test).

Runs the embedded Gemma 3 270M (bfloat16, 2 threads) under torch.profiler with labelled ranges put around the
engine's pieces from outside (the library carries no profiling code): every top-level op is charged to the
innermost labelled range it ran in, and what a phase spent outside ops is its Python overhead.

    python -m benchmarks.op_profile [--prompts 48] [--new-tokens 32] [--score-prompts 200] [--llama-shape]

With --llama-shape the generation workload is llama.cpp's comparison shape instead (48 prompts cut to 182 tokens,
32 new, ignore_eos; see engine_throughput --llama-cpp).

Phases: prefill (packed prompts), decode (one step of every running request), score (packed prompt + candidate
trees). Ops are ATen and oneDNN calls and torch.compile'd regions (gemma_ops.fused). The profiler itself slows
every op a little, so the "python" share reads high; the unprofiled wall time of the same run is printed beside it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.autograd.profiler import record_function

OPS = ("aten::", "mkldnn::", "Torch-Compiled Region")  # what counts as an op: ATen, oneDNN, fused kernels
NATIVE = "attention core (native)"  # a ctypes call the profiler sees only as its labelled range: an op too
PHASES = {"engine.prefill": "prefill", "engine.decode": "decode", "engine.score": "score", "engine.branch": "branch"}
# (module, attribute path, label): wrapped in a record_function range while profiling. Missing ones are skipped,
# so the list can name pieces that exist in one version of the engine and not another.
PIECES = [
    ("gemma_ops.engine", "GemmaEngine._prefill", "engine.prefill"),
    ("gemma_ops.engine", "GemmaEngine._decode", "engine.decode"),
    ("gemma_ops.engine", "GemmaEngine._postprocess", "sampling + finish"),
    ("gemma_ops.scoring", "Scorer.score", "engine.score"),
    ("gemma_ops.branching", "Brancher.run", "engine.branch"),
    ("gemma_ops.model", "GemmaModel._embed", "embedding"),
    ("gemma_ops.model", "GemmaModel.logits", "output layer"),
    ("gemma_ops.layers", "RMSNorm.forward", "norms"),
    ("gemma_ops.layers", "Rope.apply", "rope"),
    ("gemma_ops.fused", "Kernels.rms_norm", "norms"),
    ("gemma_ops.fused", "Kernels.add_norm", "residual adds + norms"),
    ("gemma_ops.fused", "Kernels.gelu_mul", "mlp gelu*up"),
    ("gemma_ops.fused", "Kernels.qk_norm_rope", "qk-norm + rope"),
    ("gemma_ops.prepack", "PackedLinear.forward", "linear (matmul)"),
    ("gemma_ops.layers", "Attention.forward_packed", "attention glue (packed)"),
    ("gemma_ops.layers", "Attention.forward_step", "attention glue (decode)"),
    ("gemma_ops.layers", "Attention._project", "qkv split + qk-norm"),
    ("gemma_ops.layers", "Attention._attend", "attention core"),
    ("gemma_ops.native_attention", "DecodeAttention.attend", NATIVE),
    ("gemma_ops.layers", "Rope.at", "rope"),
    ("gemma_ops.attention", "PackedPlan.build", "attention masks"),
    ("gemma_ops.attention", "PackedPlan.key_source", "attention glue (packed)"),
    ("gemma_ops.kv_cache", "KVCache.write_packed", "kv cache"),
    ("gemma_ops.kv_cache", "KVCache.write_step", "kv cache"),
    ("gemma_ops.kv_cache", "KVCache.view", "kv cache"),
    ("gemma_ops.kv_cache", "KVCache.move", "kv cache"),
    ("gemma_ops.layers", "MLP.forward", "mlp gelu*up"),
    ("gemma_ops.layers", "DecoderLayer._add_mlp", "residual adds"),
    ("torch.nn.modules.linear", "Linear.forward", "linear (matmul)"),
    ("gemma_ops.scoring", "target_logprobs", "score readout"),
    ("gemma_ops.sampling", "sample_batch", "sampling + finish"),
]


def _resolve(module: str, path: str) -> tuple[Any, str]:
    """The owner of a PIECES entry and its attribute name; a renamed function fails here instead of losing its label."""
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    if not hasattr(owner, name):
        raise AttributeError(f"op_profile.PIECES names {module}.{path}, which does not exist; update the list")
    return owner, name


@contextmanager
def labelled() -> Iterator[None]:
    """Wrap every piece in PIECES in a record_function range; restore the originals afterwards."""
    saved: list[tuple[Any, str, Any]] = []
    for module, path, label in PIECES:
        owner, name = _resolve(module, path)
        original = owner.__dict__.get(name, getattr(owner, name))
        static = isinstance(original, staticmethod)
        function = original.__func__ if static else original

        def wrapped(*args: Any, _f: Callable = function, _label: str = label, **kwargs: Any) -> Any:
            with record_function(_label):
                return _f(*args, **kwargs)

        wrapped = functools.wraps(function)(wrapped)
        setattr(owner, name, staticmethod(wrapped) if static else wrapped)
        saved.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def charge(events: list[Any]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per phase: microseconds of top-level aten ops by innermost label, and each phase's own wall time."""
    labels = {label for _, _, label in PIECES}
    by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    phase_wall: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name in PHASES and _outermost_phase(event) is event:
            phase_wall[PHASES[event.name]] += event.cpu_time_total
        is_op = event.name == NATIVE or (event.name not in labels and event.name.startswith(OPS))
        if not is_op:
            continue
        chain = _ancestors(event)
        if any(a.name.startswith(OPS) or a.name == NATIVE for a in chain):
            continue  # nested inside another op: counted with it
        label = NATIVE if event.name == NATIVE else next((a.name for a in chain if a.name in labels), "other")
        phase = next((PHASES[a.name] for a in reversed(chain) if a.name in PHASES), None)
        if phase is not None:
            by_phase[phase][label] += event.cpu_time_total
    return by_phase, phase_wall


def _ancestors(event: Any) -> list[Any]:
    chain = []
    parent = event.cpu_parent
    while parent is not None:
        chain.append(parent)
        parent = parent.cpu_parent
    return chain  # innermost first


def _outermost_phase(event: Any) -> Any:
    return next((a for a in reversed(_ancestors(event)) if a.name in PHASES), event)


def report(title: str, by_phase: dict[str, dict[str, float]], phase_wall: dict[str, float], wall: float) -> None:
    print(f"\n== {title}: {wall:.2f} s unprofiled")
    for phase, ops in by_phase.items():
        total = phase_wall[phase]
        ops = dict(ops)
        ops["python (outside ops)"] = max(total - sum(ops.values()), 0.0)
        print(f"  {phase}: {total / 1e6:.2f} s profiled")
        for label, micros in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"    {label:<28} {micros / 1e6:8.3f} s {micros / total:6.1%}")


def profiled(run: Callable[[], Any]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    with labelled(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return charge(prof.events())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--score-prompts", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--llama-shape", action="store_true", help="generate on llama.cpp's comparison shape")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from benchmarks.workload import passages, sentiment_prompt
    from gemma_ops import GemmaEngine, SamplingParams, default_model_path

    engine = GemmaEngine.from_pretrained(default_model_path(), device="cpu", dtype=args.dtype, max_context=1024)
    if args.llama_shape:
        from benchmarks.engine_ab import llama_shape_prompts

        prompts = llama_shape_prompts(engine.tokenizer, args.prompts)
        params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    else:
        prompts = passages(args.prompts, 30, 300, seed=0)
        params = SamplingParams(max_new_tokens=args.new_tokens)
    scored = [sentiment_prompt(t) for t in passages(args.score_prompts, 8, 40, seed=1)]
    labels = [" positive", " negative", " neutral"]
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up
    engine.score(scored[:2], labels, restrict_vocab=True)

    start = time.perf_counter()
    engine.generate(prompts, params)
    gen_wall = time.perf_counter() - start
    workload = "llama.cpp shape" if args.llama_shape else "engine benchmark workload"
    report(f"generate ({workload})", *profiled(lambda: engine.generate(prompts, params)), gen_wall)

    start = time.perf_counter()
    engine.score(scored, labels, restrict_vocab=True)
    score_wall = time.perf_counter() - start
    run_score = lambda: engine.score(scored, labels, restrict_vocab=True)  # noqa: E731
    title = f"score ({args.score_prompts} sentiment prompts, candidate rows only)"
    report(title, *profiled(run_score), score_wall)


if __name__ == "__main__":
    main()
