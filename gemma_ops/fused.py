"""The decoder's elementwise work (norms, QK-norm + RoPE, GeGLU gating, residual adds) as small pure functions,
run eagerly or compiled by torch.compile into fused kernels.

Eager PyTorch runs each of these as several full passes over [T, D] tensors (a float32 copy, the norm, a cast
back, a multiply, ...); on a 2-core CPU those passes cost about a fifth of a bfloat16 prefill. Inductor fuses each
function into one loop. ``emulate_precision_casts`` makes the fused code round every intermediate to the
activation dtype where eager rounds it, so compiled and eager outputs agree to the last bit or nearly (the
GeGLU gating compiles from an equivalent form, gelu_mul_by_sigmoid, that is faster there).

``Kernels(compiled=True)`` compiles lazily; ``warm_up`` compiles up front, so that no request waits for it, for one
row and for any row count of 2 or more (only the row count is a variable: head counts and widths are compiled in,
which took QK-norm + RoPE from 0.38 to 0.13 s of a prefill in op_profile --llama-shape), and reports the seconds.
Inductor's FX graph cache (``TORCHINDUCTOR_CACHE_DIR``, by default /tmp/torchinductor_<user>) keeps the kernels
on disk, so later processes start warm. If compilation fails, the kernels fall back to eager with one warning and
the engine keeps working.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------- eager functions
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm of x [..., D]: in float32, scaled by (1 + weight [D]), cast back."""
    scale = 1.0 + weight.float()
    return F.rms_norm(x.float(), scale.shape, scale, eps).type_as(x)


def add_norm(
    h: torch.Tensor, out: torch.Tensor, post: torch.Tensor | None, after: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Residual step: h [N, D] + rms_norm(out) (``post`` None: + out), and the norm (``after``) of that sum."""
    h = h + (out if post is None else rms_norm(out, post, eps))
    return h, (None if after is None else rms_norm(h, after, eps))


def gelu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """GeGLU's gating: gate_up [N, 2F] -> gelu_tanh(gate) * up [N, F]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


def gelu_mul_by_sigmoid(gate_up: torch.Tensor) -> torch.Tensor:
    """gelu_mul for compiling: gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).

    The same function in exact arithmetic; Inductor's CPU code evaluates sigmoid about twice as fast as tanh
    (benchmarks.op_profile: the gating's share of a prefill). In float32 the two differ in the last bits; in
    bfloat16 about 1 in 18,000 outputs lands one rounding step away from eager's (test_fused), and where eager's
    1 + tanh(u) cancels to 0 (gates below about -5) this gives the tiny true value instead."""
    gate, up = gate_up.chunk(2, dim=-1)
    x = gate.float()
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)
    return (x * torch.sigmoid(2 * u)).type_as(gate) * up


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[..., a | b] -> [..., b | a]; with a sign-folded sin table this is RoPE's rotate_half."""
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


def qk_norm_rope(
    qkv: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    kv_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [N, (H + 2 KVH) Dh] -> q [N, H, Dh], k [N, KVH, Dh] with QK-norm (when weights are given) and RoPE
    (cos, signed sin [N, 1, Dh]; each product rounded, then the sum, as transformers rounds it), v [N, KVH, Dh].

    q and k are normed and rotated as one [N, H + KVH, Dh] tensor: one pass instead of two."""
    n = qkv.shape[0]
    head_dim = qkv.shape[1] // (heads + 2 * kv_heads)
    qk_size = (heads + kv_heads) * head_dim
    qk = qkv[:, :qk_size].view(n, heads + kv_heads, head_dim)
    v = qkv[:, qk_size:].view(n, kv_heads, head_dim)
    if q_weight is not None and k_weight is not None:
        scale = torch.cat(
            ((1.0 + q_weight.float()).expand(heads, -1), (1.0 + k_weight.float()).expand(kv_heads, -1))
        )  # [H + KVH, Dh]
        qk = (F.rms_norm(qk.float(), (head_dim,), eps=eps) * scale).type_as(qkv)
    qk = qk * cos + swap_halves(qk) * sin
    return qk[:, :heads], qk[:, heads:], v


def first_max(logits: torch.Tensor) -> torch.Tensor:
    """Greedy tokens: logits [B, V] -> [B], each row's first maximum (argmax's index; eagerly faster on CPU)."""
    return logits.max(dim=-1).indices


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """first_max for compiling: faster over bfloat16 rows of 262144 logits (the engine split's "other", mostly
    this, went from 0.33-0.35 to 0.26-0.27 s in engine_throughput --llama-cpp)."""
    return logits.argmax(dim=-1)


# ------------------------------------------------------------------------------------------------- the kernels
_EAGER: dict[str, Callable] = {
    "rms_norm": rms_norm,
    "add_norm": add_norm,
    "gelu_mul": gelu_mul,
    "qk_norm_rope": qk_norm_rope,
    "greedy": first_max,
}
_COMPILED: dict[str, Callable] = {**_EAGER, "gelu_mul": gelu_mul_by_sigmoid, "greedy": argmax_rows}


class Kernels:
    """The functions above, eager or compiled; a compiled one that fails switches all of them to eager."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled
        self.failure: str | None = None
        if compiled:
            options = {"emulate_precision_casts": True}
            self._fns = {name: torch.compile(fn, options=options) for name, fn in _COMPILED.items()}

    @classmethod
    def eager(cls) -> Kernels:
        return cls(compiled=False)

    def _call(self, name: str, *args):
        if not self.compiled:
            return _EAGER[name](*args)
        args = tuple(a.detach() if isinstance(a, nn.Parameter) else a for a in args)  # one guard type: Tensor
        try:
            return self._fns[name](*args)
        except Exception as error:  # any compiler failure: the eager functions still work
            self._fall_back(f"{type(error).__name__}: {error}")
            return _EAGER[name](*args)

    def _fall_back(self, reason: str) -> None:
        first_line = reason.splitlines()[0][:300] if reason else "unknown error"
        warnings.warn(f"torch.compile of the fused decoder kernels failed ({first_line}); running eager", stacklevel=3)
        self.failure = first_line
        self.compiled = False

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self._call("rms_norm", x, weight, eps)

    def add_norm(self, h, out, post, after, eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._call("add_norm", h, out, post, after, eps)

    def gelu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self._call("gelu_mul", gate_up)

    def qk_norm_rope(self, qkv, q_weight, k_weight, cos, sin, heads: int, kv_heads: int, eps: float):
        return self._call("qk_norm_rope", qkv, q_weight, k_weight, cos, sin, heads, kv_heads, eps)

    def greedy(self, logits: torch.Tensor) -> torch.Tensor:
        return self._call("greedy", logits)

    def warm_up(self, shapes: WarmUpShapes, device: torch.device, dtype: torch.dtype) -> float:
        """Compile every function the model calls, for 1 and for several rows; returns the seconds it took."""
        start = time.perf_counter()
        if not self.compiled:
            return 0.0
        s = shapes
        # Weights as the model's are (ordinary tensors, distinct: dynamo guards on aliasing); activations as the
        # engine makes them (inference tensors), for 3 rows marked dynamic (any count >= 2; every other size
        # stays fixed, so the loops compile for the model's own widths) and for 1 (compiled apart).
        weight = lambda n: torch.zeros(n, device=device, dtype=dtype)  # noqa: E731
        norm, post, after = weight(s.hidden), weight(s.hidden) if s.sandwich else None, weight(s.hidden)
        q_weight, k_weight = (weight(s.head_dim), weight(s.head_dim)) if s.qk_norm else (None, None)
        width = (s.heads + 2 * s.kv_heads) * s.head_dim
        with torch.inference_mode():
            for rows in (3, 1):
                make = functools.partial(_activation, rows, device=device, dtype=dtype)
                self.rms_norm(make(s.hidden), norm, s.eps)
                self.add_norm(make(s.hidden), make(s.hidden), post, after, s.eps)  # after attention, then a norm
                self.add_norm(make(s.hidden), make(s.hidden), post, None, s.eps)  # after the MLP
                self.gelu_mul(make(2 * s.intermediate))
                cos, sin = make(1, s.head_dim), make(1, s.head_dim)
                self.qk_norm_rope(make(width), q_weight, k_weight, cos, sin, s.heads, s.kv_heads, s.eps)
                self.greedy(make(s.vocab))
        return time.perf_counter() - start


def _activation(rows: int, *shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Zeros [rows, *shape] for warm_up; more than one row: the row count is compiled as a variable."""
    tensor = torch.zeros(rows, *shape, device=device, dtype=dtype)
    if rows > 1:
        torch._dynamo.mark_dynamic(tensor, 0)
    return tensor


@dataclass(frozen=True)
class WarmUpShapes:
    """What the model feeds the kernels (from GemmaConfig): enough to compile them before the first request."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    qk_norm: bool
    sandwich: bool
    vocab: int
