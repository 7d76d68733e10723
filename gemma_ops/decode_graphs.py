"""The decode step: dynamic shapes, or static shapes that a GPU captures once per bucket as CUDA graphs.

Why: on a GPU one decode step of a small Gemma is several hundred small kernels, and launching them one by one
from Python can take longer than running them, at small batches above all. A CUDA graph replays them all with one
launch, but it fixes every tensor's shape and address when it is captured. So the static step
(``DecodeStep(mode="static" | "cuda graphs")``):

- pads the batch up to a bucket (``batch_buckets``: 1, 2, 4, 8, 16, 32, then steps of 32, and max_slots);
  padded rows feed token 0 at position 0 into the free slots after the running ones (the scheduler keeps running
  requests in slots 0..n-1, and a slot is overwritten by the prefill that takes it), and their rows are dropped;
- attends to a fixed key length (``key_bucket``: the longest position + 1 rounded up to a multiple of 64, or
  of an eighth of its power of two above 512, so at most 12.5% more keys are read; capped by the cache's
  context) with a mask (key index <= position) instead of slicing the cache to the longest position; ring
  (sliding-window) layers read min(key length, window) entries under the same mask;
- reads its inputs from buffers allocated once per KV cache ([2, max_slots]: tokens, positions; one host-to-device
  copy per step) and writes the last hidden states into one [max_slots, D] buffer that every bucket shares.

On CUDA ("cuda graphs") each (batch bucket, key length) is captured on first use, after warm-up runs on a side
stream, into a memory pool that all graphs of one cache share (they never run concurrently), then replayed. Only
the buckets a workload uses are captured, and at most ``MAX_GRAPHS`` are kept (the least recently used goes
first). The graphs belong to one KV cache: when the engine reallocates its cache they are dropped and recaptured
on the new one (the cache is held by weak reference, so the old one is freed as the allocator intends). Sampling
and the output layer stay outside the graph (the output layer then runs on the real rows only). "static" runs the
same function eagerly: on the CPU that is how it is tested against the dynamic step; on CUDA it is the uncaptured
reference for a graph.

The dynamic step ("dynamic", the CPU default) is ``GemmaModel.forward_step`` with exact shapes: no padding, keys
up to the longest position.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from gemma_ops.kv_cache import KVCache
from gemma_ops.model import GemmaModel

DYNAMIC, STATIC, CUDA_GRAPHS = "dynamic", "static", "cuda graphs"
KEY_BLOCK = 64  # the smallest step between key lengths (attention reads a little more; far fewer graphs)
MAX_GRAPHS = 128  # graphs kept per cache (a graph holds its kernels' parameters; the memory pool is shared)
WARMUP_RUNS = 2  # eager runs on a side stream before a capture (cuBLAS handles, workspaces, SDPA choice)


def decode_mode(option: bool | None, device: torch.device) -> str:
    """``option`` None: CUDA graphs on CUDA, dynamic elsewhere; True: static shapes (captured on CUDA, eager
    elsewhere); False: dynamic."""
    if option is None:
        option = device.type == "cuda"
    if not option:
        return DYNAMIC
    return CUDA_GRAPHS if device.type == "cuda" else STATIC


def batch_buckets(max_slots: int) -> tuple[int, ...]:
    """Padded batch sizes: powers of two up to 32, then multiples of 32 (less padding at large batches), and
    max_slots itself; none above max_slots, since padded rows use real cache slots."""
    sizes = [b for b in (1, 2, 4, 8, 16) if b < max_slots]
    sizes += range(32, max_slots, 32)
    return (*sizes, max_slots)


def batch_bucket(n: int, max_slots: int) -> int:
    """The smallest bucket that holds ``n`` running requests."""
    if not 1 <= n <= max_slots:
        raise ValueError(f"a decode step of {n} requests does not fit a cache of {max_slots} slots")
    return next(b for b in batch_buckets(max_slots) if b >= n)


def key_bucket(length: int, block: int, context: int) -> int:
    """Keys a static step attends to: ``length`` (longest position + 1) rounded up to a multiple of ``block``,
    or of 2^k / 8 for 2^k < length <= 2^(k+1) when that is larger (eight buckets per doubling), capped by
    ``context`` (the global layers' cache capacity)."""
    if not 1 <= length <= context:
        raise ValueError(f"a decode step needs {length} keys; the cache holds {context}")
    step = max(block, (1 << max((length - 1).bit_length() - 1, 0)) // 8)
    return min(-(-length // step) * step, context)


@dataclass(frozen=True)
class DecodeStats:
    """What the decode steps have done since the engine loaded (printed by benchmarks)."""

    mode: str  # DYNAMIC, STATIC or CUDA_GRAPHS
    steps: int
    graphs_captured: int  # captures so far, counting recaptures after a cache reallocation
    graphs_held: int  # graphs alive now (those of the current cache)
    padded_rows: int  # rows computed and dropped to fill batch buckets (the static modes' extra work)


class DecodeStep:
    """One decode step of the running slots 0..n-1 -> hidden states [n, D] before the final norm."""

    def __init__(self, model: GemmaModel, mode: str, key_block: int = KEY_BLOCK) -> None:
        if mode not in (DYNAMIC, STATIC, CUDA_GRAPHS):
            raise ValueError(f"unknown decode mode {mode!r}; use {DYNAMIC!r}, {STATIC!r} or {CUDA_GRAPHS!r}")
        if mode == CUDA_GRAPHS and model.embed.weight.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {model.embed.weight.device}")
        if key_block < 1:
            raise ValueError(f"key_block must be >= 1, got {key_block}")
        self.model = model
        self.mode = mode
        self.key_block = key_block
        self.steps = 0
        self.graphs_captured = 0
        self.padded_rows = 0
        self._cache: weakref.ref[KVCache] | None = None  # the cache the buffers and graphs below belong to
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (batch, keys) -> graph
        self._pool: tuple[int, int] | None = None
        self._inputs = torch.empty(0)  # [2, max_slots] long: tokens, positions
        self._hidden = torch.empty(0)  # [max_slots, D]

    @property
    def stats(self) -> DecodeStats:
        return DecodeStats(self.mode, self.steps, self.graphs_captured, len(self._graphs), self.padded_rows)

    def step(self, tokens: list[int], positions: list[int], cache: KVCache) -> torch.Tensor:
        """tokens, positions of slots 0..n-1 -> hidden [n, D]. In the static modes the result is a view of a
        shared buffer, valid until the next step."""
        self.steps += 1
        device = self.model.embed.weight.device
        if self.mode == DYNAMIC:
            host = torch.tensor([tokens, positions])  # [2, n]: one copy to the device
            on_device = host.to(device)
            return self.model.forward_step(on_device[0], on_device[1], cache, max(positions) + 1)
        n = len(tokens)
        self._bind(cache)
        batch = batch_bucket(n, cache.max_slots)
        keys = key_bucket(max(positions) + 1, self.key_block, cache.max_context)
        padding = [0] * (batch - n)
        self.padded_rows += batch - n
        self._inputs[:, :batch].copy_(torch.tensor([tokens + padding, positions + padding]))
        if self.mode == STATIC:
            self._run(batch, keys, cache)
        else:
            graph = self._graphs.pop((batch, keys), None)
            if graph is None:
                graph = self._capture(batch, keys, cache)
            self._graphs[(batch, keys)] = graph  # (re)inserted last: the dict runs from least to most recent
            with torch.cuda.device(device):  # replays on the current stream of the current device
                graph.replay()
        return self._hidden[:n]

    def _bind(self, cache: KVCache) -> None:
        """Buffers (and graphs) for ``cache``: kept while the engine keeps that cache, made anew when it changes."""
        if self._cache is not None and self._cache() is cache:
            return
        self._graphs.clear()  # captured against the old cache's (and buffers') addresses
        device, dtype = self.model.embed.weight.device, self.model.embed.weight.dtype
        self._pool = torch.cuda.graph_pool_handle() if self.mode == CUDA_GRAPHS else None
        self._inputs = torch.zeros(2, cache.max_slots, dtype=torch.long, device=device)
        self._hidden = torch.zeros(cache.max_slots, self.model.config.hidden_size, dtype=dtype, device=device)
        self._cache = weakref.ref(cache)

    def _run(self, batch: int, keys: int, cache: KVCache) -> None:
        """The static step on the buffers' first ``batch`` rows: what a graph captures. GemmaModel.forward_step
        with ``keys`` fixed instead of max(positions) + 1."""
        tokens, positions = self._inputs[0, :batch], self._inputs[1, :batch]  # [b] each
        self._hidden[:batch].copy_(self.model.forward_step(tokens, positions, cache, keys))  # [b, D]

    def _capture(self, batch: int, keys: int, cache: KVCache) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream, then capture the step. The warm-up runs write this step's keys and values
        into the cache, which the replay that follows writes again, identically."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.model.embed.weight.device):  # the model's GPU, whichever is current
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._run(batch, keys, cache)
            current.wait_stream(side)
            # thread_local: other threads of the worker (another model copy, tokenization) may use CUDA meanwhile
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                self._run(batch, keys, cache)
        if len(self._graphs) >= MAX_GRAPHS:
            del self._graphs[next(iter(self._graphs))]  # the least recently used
        self.graphs_captured += 1
        return graph
