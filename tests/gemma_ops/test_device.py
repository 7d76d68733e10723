"""Device and dtype resolution and KV-cache sizing, without a model."""

from __future__ import annotations

import pytest
import torch

from gemma_ops.device import resolve_device, resolve_dtype, slots_that_fit


def test_explicit_device_and_dtype_are_taken_as_given():
    assert resolve_device("cpu") == torch.device("cpu")
    cpu = torch.device("cpu")
    assert resolve_dtype("float16", cpu) is torch.float16
    assert resolve_dtype(torch.bfloat16, cpu) is torch.bfloat16
    assert resolve_dtype(None, cpu) in (torch.bfloat16, torch.float32)
    for name in ("bfloat17", "Tensor"):  # no such attribute; an attribute that is not a dtype
        with pytest.raises(ValueError, match=f"unknown dtype '{name}'"):
            resolve_dtype(name, cpu)


def test_cache_slots_fit_in_ninety_percent_of_the_free_memory():
    assert slots_that_fit(free_bytes=1000, per_slot_bytes=90) == 10  # 900 // 90
    assert slots_that_fit(free_bytes=999, per_slot_bytes=90) == 9  # int(899.1) // 90
    assert slots_that_fit(free_bytes=50, per_slot_bytes=90) == 0
