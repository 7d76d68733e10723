"""Decode-step attention for bfloat16 on the CPU by a small C kernel (gemma_ops/native/decode_attention.c).

Why: a decode step reads every running sequence's cached keys and values once per layer, and PyTorch's CPU
attention runs that as small matrix products, 1.7 times as long (on the llama.cpp benchmark shape the decode
steps' attention took 0.63 s with it and 0.37 s with the kernel: benchmarks.op_profile --llama-shape). The kernel
uses AVX-512 BF16 dot products where the compiler and CPU have them and portable C elsewhere.

It is compiled once per machine with the system C compiler (the one torch.compile's CPU kernels already need)
into $GEMMA_BEAM_CACHE/native (by default ~/.cache/gemma-beam/native), keyed by the source, the flags and the
compiler. ``load_decode_attention`` returns None with one warning when no compiler can build it, and the model
keeps PyTorch's attention: nothing depends on the kernel being there.
"""

from __future__ import annotations

import ctypes
import hashlib
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

from gemma_ops.checkpoints import cache_root
from gemma_ops.checkpoints.staging import build_once

SOURCE = Path(__file__).with_name("native") / "decode_attention.c"
LIBRARY = "decode_attention.so"
# Tried in order: the CPU's own instructions (AVX-512 BF16 where it has them), then portable code.
# -fopenmp: threads from the libgomp that PyTorch has loaded (the same soname), never a second thread pool.
FLAG_SETS = (
    ("-O3", "-fopenmp", "-march=native", "-mprefer-vector-width=512"),
    ("-O3", "-fopenmp", "-march=native"),
    ("-O3", "-fopenmp"),
)
_ERRORS = {1: "arguments it cannot run", 2: "out of memory"}


class DecodeAttention:
    """The loaded kernel: ``attend(q, keys, values, positions)`` for one decode step of one layer."""

    def __init__(self, library: Path) -> None:
        self.library = library
        self._fn = ctypes.CDLL(str(library)).decode_attention_bf16
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_void_p] + [
            ctypes.c_float, ctypes.c_float, ctypes.c_int,
        ]  # fmt: skip

    @staticmethod
    def supports(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """What the kernel reads: bfloat16 CPU tensors, each with a contiguous last dimension, and whole groups
        of query heads per KV head."""
        tensors = (q, keys, values)
        return (
            all(t.device.type == "cpu" and t.dtype == torch.bfloat16 and t.stride(-1) == 1 for t in tensors)
            and q.shape[1] % keys.shape[1] == 0
        )

    def attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        scale: float,
        softcap: float | None,
    ) -> torch.Tensor:
        """q [B, H, Dh]; keys, values [B, KVH, L, Dh] (slot b's cache); sequence b attends to its first
        min(positions[b] + 1, L) keys -> [B, H, Dh]. Head h uses KV head h // (H / KVH)."""
        batch, heads, dim = q.shape
        kv_heads, length = keys.shape[1], keys.shape[2]
        if positions.shape != (batch,):
            raise ValueError(f"positions must be [{batch}] (one per sequence), got {tuple(positions.shape)}")
        out = torch.empty(batch, heads, dim, dtype=q.dtype)
        where = positions.to(torch.int64).contiguous()
        strides = (ctypes.c_int64 * 10)(*q.stride()[:2], *keys.stride()[:3], *values.stride()[:3], *out.stride()[:2])
        status = self._fn(
            q.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(), where.data_ptr(),
            batch, kv_heads, heads // kv_heads, dim, length, strides,
            scale, softcap or 0.0, torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise RuntimeError(f"the native decode attention failed: {_ERRORS.get(status, status)}")
        return out


def _compiler() -> str | None:
    for name in ("cc", "gcc", "clang"):
        if found := shutil.which(name):
            return found
    return None


def _machine() -> bytes:
    """What -march=native compiles for: the architecture and, on Linux, the CPU's feature flags (a cache folder
    shared by different machines must not hand one a library with instructions it lacks)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_bytes().splitlines() if cpuinfo.is_file() else []
    return platform.machine().encode() + next((x for x in lines if x.startswith((b"flags", b"Features"))), b"")


def _build(compiler: str, flags: tuple[str, ...], folder: Path) -> None:
    command = [compiler, *flags, "-shared", "-fPIC", "-o", str(folder / LIBRARY), str(SOURCE), "-lm"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)


def load_decode_attention(
    cache: Path | None = None, flag_sets: tuple[tuple[str, ...], ...] = FLAG_SETS
) -> DecodeAttention | None:
    """Build (once per machine) and load the kernel with the first of ``flag_sets`` that compiles; None, with
    one warning, where none does."""
    compiler = _compiler()
    if compiler is None:
        warnings.warn("no C compiler (cc, gcc or clang) found: decode attention runs on PyTorch's", stacklevel=2)
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
        source, machine = SOURCE.read_bytes(), _machine()
    except (subprocess.SubprocessError, OSError) as error:
        warnings.warn(f"the native decode attention cannot be built ({error}): decode attention runs on PyTorch's",
                      stacklevel=2)  # fmt: skip
        return None
    failures = []
    for flags in flag_sets:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(), machine]))
        target = (cache or cache_root() / "native") / f"decode-attention-{key.hexdigest()[:16]}"
        try:
            if not (target / LIBRARY).is_file():
                build_once(target, lambda folder, flags=flags: _build(compiler, flags, folder),
                           lambda path: (path / LIBRARY).is_file())  # fmt: skip
            return DecodeAttention(target / LIBRARY)
        except (subprocess.SubprocessError, OSError) as error:
            lines = (getattr(error, "stderr", None) or str(error)).strip().splitlines()
            failures.append(f"{' '.join(flags)}: {lines[-1] if lines else type(error).__name__}")
    warnings.warn(f"the native decode attention did not build ({'; '.join(failures)}): decode attention runs "
                  "on PyTorch's", stacklevel=2)  # fmt: skip
    return None
