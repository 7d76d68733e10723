"""Device and dtype resolution and KV-cache sizing, without a model."""

from __future__ import annotations

import pytest
import torch

from gemma_ops.device import resolve_device, resolve_dtype


def test_explicit_device_and_dtype_are_taken_as_given():
    assert resolve_device("cpu") == torch.device("cpu")
    cpu = torch.device("cpu")
    assert resolve_dtype("float16", cpu) is torch.float16
    assert resolve_dtype(torch.bfloat16, cpu) is torch.bfloat16
    assert resolve_dtype(None, cpu) in (torch.bfloat16, torch.float32)
    for name in ("bfloat17", "Tensor"):  # no such attribute; an attribute that is not a dtype
        with pytest.raises(ValueError, match=f"unknown dtype '{name}'"):
            resolve_dtype(name, cpu)
