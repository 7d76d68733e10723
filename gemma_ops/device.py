"""Device and memory policy: which device and dtype to run on, how much memory is free, how big the KV cache is.

The KV cache is the engine's one large allocation. It is sized to the requests of a call, capped by the budget
fixed at load (this copy's share of 90% of the free memory: host MemAvailable, a container's cgroup v2 limit, or the
GPU's free memory) and by 90% of what is free when it grows, and kept across calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gemma_ops.config import GemmaConfig
from gemma_ops.kv_cache import KVCache

MEMORY_HEADROOM = 0.9  # share of the free memory the KV cache may take


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, else CUDA where there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Explicit dtype (object or name), else bfloat16 where the hardware runs it fast, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        resolved = getattr(torch, str(dtype), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16' or 'float32'")
        return resolved
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    fast_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if fast_bf16 else torch.float32


def free_memory_bytes(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can take without swapping or an out-of-memory error."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    available = _host_available_bytes()
    container = _cgroup_available_bytes()  # a container (Docker, Dataflow) may allow less than the host has
    return min(available, container) if container is not None else available


def _host_available_bytes() -> int:
    try:  # Linux: memory available without swapping (free + reclaimable cache)
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no figure on this platform: do not cap
        return 2**62


def _cgroup_available_bytes() -> int | None:
    """cgroup v2 limit minus usage, or None where no limit is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


class KVCacheAllocator:
    """Holds the engine's KV cache between calls and sizes it: as many slots as asked, or as fit.

    The budget is fixed when the engine loads: model copies that share a device load one at a time (the Beam
    handler holds a machine-wide lock), so each budget sees the memory the copies before it took and their
    caches, sized later on each copy's first call, never overlap however those calls interleave. A cache capped
    by memory is kept while no more fits, and grows once memory has been freed (checked only when a call wants
    more slots than it has).
    """

    def __init__(
        self, config: GemmaConfig, max_context: int, device: torch.device, dtype: torch.dtype, shared_by: int = 1
    ) -> None:
        """``shared_by``: model copies sharing this device; each cache may take 1/n of the usable memory."""
        if shared_by < 1:
            raise ValueError(f"cache_shared_by must be >= 1, got {shared_by}")
        self.config = config
        self.max_context = max_context
        self.device = device
        self.dtype = dtype
        self.budget = int(free_memory_bytes(device) * MEMORY_HEADROOM / shared_by)
        self.cache: KVCache | None = None
        self.at_memory_limit = False  # fewer slots than last wanted; re-checked when more are wanted

    def _bytes(self, slots: int) -> int:
        return KVCache.bytes_needed(self.config, slots, self.max_context, self.dtype.itemsize)

    def get(self, slots: int) -> KVCache:
        """A cache with at least ``slots`` slots, or as many as fit (at least one): within the budget fixed at
        load and the usable share of the memory free now."""
        if self.cache is not None and self.cache.max_slots >= slots:
            return self.cache
        per_slot = self._bytes(1)
        held = self._bytes(self.cache.max_slots) if self.cache is not None else 0  # free for a new cache
        fitting = min(self.budget, int((free_memory_bytes(self.device) + held) * MEMORY_HEADROOM)) // per_slot
        if self.cache is not None and fitting <= self.cache.max_slots:
            self.at_memory_limit = True
            return self.cache
        if fitting < 1:
            raise MemoryError(
                f"one KV-cache slot of {self.max_context} tokens needs {per_slot / 2**20:.0f} MiB, more than this "
                f"copy's share of the memory free on {self.device}; lower max_context (or the model copies)"
            )
        if self.cache is not None:
            self.cache = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand the old cache back before the larger one is allocated
        self.at_memory_limit = fitting < slots
        self.cache = KVCache(self.config, min(slots, fitting), self.max_context, self.device, self.dtype)
        return self.cache
