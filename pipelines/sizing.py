"""Batch token budgets per GPU type, derived from the model's KV-cache bytes per token and the GPU's memory.

The engine keeps every admitted sequence's keys and values resident, so the tokens a worker can hold at once
are bounded by (GPU memory x utilization - weights - fixed overhead) / (KV bytes + activation bytes per
token). Sliding-window layers only keep their window, so the per-token cost is measured at a typical
sequence length with ``KVCache.bytes_needed``, not assumed from the global layers.

    python -m pipelines.sizing --model embedded --seq_len 1024
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from gemma_ops.config import GemmaConfig
from gemma_ops.kv_cache import KVCache

GIB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    """One Dataflow GPU type: the accelerator name Dataflow wants, its memory, a matching machine type."""

    name: str
    accelerator: str
    memory_bytes: int
    machine_type: str


GPUS: dict[str, GpuSpec] = {
    "L4": GpuSpec("L4", "nvidia-l4", 24 * GIB, "g2-standard-8"),
    "A100": GpuSpec("A100", "nvidia-tesla-a100", 40 * GIB, "a2-highgpu-1g"),
    "A100-80GB": GpuSpec("A100-80GB", "nvidia-a100-80gb", 80 * GIB, "a2-ultragpu-1g"),
    "H100": GpuSpec("H100", "nvidia-h100-80gb", 80 * GIB, "a3-highgpu-1g"),
}

UTILIZATION = 0.85  # leave room for the allocator's fragmentation and other processes
OVERHEAD_BYTES = int(1.5 * GIB)  # CUDA context, cuBLAS workspaces, torch's own reserve
MAX_BUDGET_TOKENS = 1 << 20  # beyond this, batches only add latency


@dataclass(frozen=True)
class TokenBudget:
    gpu: GpuSpec
    tokens: int
    kv_bytes_per_token: int
    activation_bytes_per_token: int
    free_bytes: int


def kv_bytes_per_token(config: GemmaConfig, seq_len: int, dtype_bytes: int = 2) -> int:
    """KV bytes one token costs in a sequence of ``seq_len`` tokens (sliding layers keep their window only)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    total = KVCache.bytes_needed(config, max_slots=1, max_context=seq_len, dtype_bytes=dtype_bytes)
    return -(-total // seq_len)


def activation_bytes_per_token(config: GemmaConfig, dtype_bytes: int = 2) -> int:
    """Transient activations of one token in a forward pass: residual, q/k/v/o and the GeGLU MLP of a layer."""
    attention = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
    return dtype_bytes * (4 * config.hidden_size + attention + 3 * config.intermediate_size)


def checkpoint_weight_bytes(path: str | Path) -> int:
    """Bytes of a checkpoint's safetensors files: what the weights take on the GPU at the same dtype."""
    files = list(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files to size the weights from")
    return sum(f.stat().st_size for f in files)


def token_budget(
    config: GemmaConfig, weight_bytes: int, gpu: GpuSpec, seq_len: int = 1024, dtype_bytes: int = 2
) -> TokenBudget:
    """The batch token budget for ``gpu``; fails when the weights alone do not fit."""
    free = int(gpu.memory_bytes * UTILIZATION) - weight_bytes - OVERHEAD_BYTES
    kv = kv_bytes_per_token(config, seq_len, dtype_bytes)
    act = activation_bytes_per_token(config, dtype_bytes)
    if free <= 0:
        raise ValueError(
            f"the weights ({weight_bytes / GIB:.1f} GiB) do not fit a {gpu.name} "
            f"({gpu.memory_bytes / GIB:.0f} GiB at {UTILIZATION:.0%}); pick a larger GPU or a smaller model"
        )
    tokens = min(free // (kv + act), MAX_BUDGET_TOKENS)
    if tokens < seq_len:
        raise ValueError(
            f"a {gpu.name} holds only {tokens} tokens beside the weights, less than one {seq_len}-token sequence"
        )
    return TokenBudget(gpu, int(tokens), kv, act, free)


def default_budgets(model_path: str | Path, seq_len: int = 1024) -> dict[str, TokenBudget | str]:
    """Budgets for every GPU type for the checkpoint at ``model_path``; a GPU it does not fit maps to why."""
    config = GemmaConfig.from_pretrained(model_path)
    weights = checkpoint_weight_bytes(model_path)
    budgets: dict[str, TokenBudget | str] = {}
    for name, gpu in GPUS.items():
        try:
            budgets[name] = token_budget(config, weights, gpu, seq_len)
        except ValueError as err:
            budgets[name] = str(err)
    return budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sizing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded, a checkpoint folder or gs:// folder.")
    parser.add_argument("--seq_len", type=int, default=1024, help="Typical prompt + output tokens per record.")
    args = parser.parse_args(argv)
    from gemma_ops.checkpoints import resolve_model

    budgets = default_budgets(resolve_model(args.model), args.seq_len)
    print(f"{'GPU':<10} {'accelerator':<18} {'machine':<16} {'budget tokens':>14} {'KV B/token':>11}")
    for name, b in budgets.items():
        gpu = GPUS[name]
        if isinstance(b, str):
            print(f"{name:<10} {gpu.accelerator:<18} {gpu.machine_type:<16} does not fit: {b}")
            continue
        print(f"{name:<10} {gpu.accelerator:<18} {gpu.machine_type:<16} {b.tokens:>14} {b.kv_bytes_per_token:>11}")
    print("pass the budget as --engine_max_batch_tokens; --batch_max_tokens well below it keeps batches flowing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
