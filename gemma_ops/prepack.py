"""Linear layers with their weights laid out once for oneDNN's bfloat16 matmul on CPU.

``F.linear`` on CPU re-lays the weight into oneDNN's blocked format at every call. For the decode step (a few
dozen rows against a [262144, 640] output layer) that repacking costs about a fifth of the matmul; for the
decoder's own linears about a tenth. Packing at load time gives the same products (the same kernel runs) without
it. Packed weights are opaque tensors: anything that reads or changes weights (LoRA merging) happens before.
"""

from __future__ import annotations

import torch
from torch import nn


def can_prepack(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN runs bfloat16 natively on this CPU (else packing buys nothing)."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def pack_weight(weight: torch.Tensor, rows_hint: int) -> torch.Tensor:
    """weight [out, in] -> oneDNN's blocked layout, chosen for about ``rows_hint`` input rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows_hint)


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x [N, in] @ packed [out, in]^T -> [N, out]."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


class PackedLinear(nn.Module):
    """A bias-free nn.Linear whose weight lives only in packed form (inference only)."""

    def __init__(self, linear: nn.Linear, rows_hint: int) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("PackedLinear packs bias-free linears only (Gemma has no biases)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = pack_weight(linear.weight, rows_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def prepack_linears(module: nn.Module, rows_hint: int) -> int:
    """Replace every bias-free nn.Linear under ``module`` by a PackedLinear; returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(module, name, PackedLinear(child, rows_hint))
            replaced += 1
        else:
            replaced += prepack_linears(child, rows_hint)
    return replaced
