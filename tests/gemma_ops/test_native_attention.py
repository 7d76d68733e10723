"""The native decode attention (gemma_ops/native/decode_attention.c) against float32 attention, and its fallback."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from gemma_ops import native_attention
from gemma_ops.kv_cache import KVCache
from gemma_ops.native_attention import FLAG_SETS, DecodeAttention, load_decode_attention
from gemma_ops.weights import load_model
from tests.gemma_ops.test_fused import _random

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="no C compiler")  # fmt: skip


@pytest.fixture(scope="module", params=["native flags", "portable"])
def kernel(request, tmp_path_factory) -> DecodeAttention:
    """Built with the CPU's own instructions (AVX-512 BF16 here), and as portable C (-O3 -fopenmp only)."""
    flag_sets = FLAG_SETS if request.param == "native flags" else FLAG_SETS[-1:]
    loaded = load_decode_attention(tmp_path_factory.mktemp("native"), flag_sets)
    assert loaded is not None
    return loaded


def _reference(q, keys, values, positions, scale: float, softcap: float | None) -> torch.Tensor:
    """Float32 attention of q [B, H, D] over each sequence's first min(position + 1, L) keys."""
    groups = q.shape[1] // keys.shape[1]
    k = keys.float().repeat_interleave(groups, dim=1)  # [B, H, L, D]
    v = values.float().repeat_interleave(groups, dim=1)
    scores = torch.einsum("bhd,bhld->bhl", q.float(), k) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = torch.arange(keys.shape[2])[None, :] <= positions[:, None]  # [B, L]
    probs = scores.masked_fill(~allowed[:, None, :], float("-inf")).softmax(-1)
    return torch.einsum("bhl,bhld->bhd", probs, v)


@needs_compiler
@pytest.mark.parametrize(
    "batch, kv_heads, groups, dim, softcap",
    [
        (6, 1, 4, 256, None),  # Gemma 3 270M / 1B
        (3, 2, 2, 128, 50.0),  # Gemma 2 style: grouped, soft-capped
        (2, 1, 3, 64, None),  # a head count that is not a multiple of the kernel's block of 4
        (1, 2, 1, 48, None),  # one sequence; a head size the AVX-512 paths do not take (portable loops)
        (2, 4, 1, 256, None),  # one query head per KV head (Gemma 7B): the AVX-512 paths with a single row
    ],
)
def test_kernel_matches_float32_attention(kernel, batch, kv_heads, groups, dim, softcap):
    heads, capacity, length = kv_heads * groups, 40, 29
    # q as the engine hands it over: a slice of the projection output, rows strided past the k and v heads
    qkv = _random(batch, heads + 2 * kv_heads, dim, seed=1)
    q = qkv[:, :heads]
    cache_k, cache_v = (
        _random(batch + 2, kv_heads, capacity, dim, seed=2),
        _random(batch + 2, kv_heads, capacity, dim, seed=3),
    )
    keys, values = cache_k[:batch, :, :length], cache_v[:batch, :, :length]  # cache views, as KVCache.view
    positions = torch.tensor([28, 0, 13, 100, 7, 28][:batch])  # 100: a ring layer past its window reads all L
    got = kernel.attend(q, keys, values, positions, dim**-0.5, softcap)
    want = _reference(q, keys, values, positions, dim**-0.5, softcap)
    assert got.shape == (batch, heads, dim) and got.dtype == torch.bfloat16
    # products of bfloat16 numbers are exact in float32: the only rounding left is the output's own
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-6)


@needs_compiler
def test_model_decode_step_with_the_kernel_is_as_close_to_float32_as_pytorch_attention(
    tiny_checkpoints, kernel, monkeypatch
):
    """Gemma 2 (soft-capped) and Gemma 3: a bfloat16 decode step with and without the kernel, both against the
    same step in float32 (the two bfloat16 paths round differently, so neither equals the other)."""
    calls = []
    attend = DecodeAttention.attend
    monkeypatch.setattr(DecodeAttention, "attend", lambda self, *args: calls.append(1) or attend(self, *args))
    tokens, positions = torch.tensor([5, 17, 300]), torch.tensor([9, 30, 2])
    for family in ("gemma2", "gemma3"):
        errors = []
        for decode_attention in (None, kernel, "float32"):
            dtype = torch.float32 if decode_attention == "float32" else torch.bfloat16
            model = load_model(tiny_checkpoints[family], "cpu", dtype)
            model.init_rope(64)
            model.use_decode_attention(None if decode_attention == "float32" else decode_attention)
            cache = KVCache(model.config, 3, 64, "cpu", dtype)
            for layer in range(len(cache.keys)):  # the same earlier context in every slot
                cache.keys[layer].copy_(_random(*cache.keys[layer].shape, seed=layer))
                cache.values[layer].copy_(_random(*cache.values[layer].shape, seed=100 + layer))
            calls.clear()
            errors.append(model.forward_step(tokens, positions, cache, length=31).float())
            assert len(calls) == (model.config.num_layers if decode_attention is kernel else 0)
        pytorch_error, kernel_error = ((e - errors[2]).abs().mean().item() for e in errors[:2])
        # measured 1.2x; a kernel reading the wrong keys or heads is off by tens of times
        assert kernel_error <= 1.5 * pytorch_error, (family, kernel_error, pytorch_error)


@needs_compiler
def test_speed_up_installs_the_kernel_for_bfloat16_on_the_cpu_only(tiny_checkpoints, monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMA_BEAM_CACHE", str(tmp_path))
    for dtype, compile_kernels, installed in ((torch.bfloat16, True, True), (torch.bfloat16, False, False),
                                              (torch.float32, True, False)):  # fmt: skip
        model = load_model(tiny_checkpoints["gemma3"], "cpu", dtype)
        model.speed_up(prepack=False, compile_kernels=compile_kernels, rows_hint=4)
        kernels = {type(layer.attn.decode_attention) for layer in model.layers}
        assert kernels == ({DecodeAttention} if installed else {type(None)}), (dtype, compile_kernels)


def test_no_compiler_leaves_pytorch_attention_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(native_attention.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="no C compiler"):
        assert load_decode_attention(tmp_path) is None


@needs_compiler
def test_a_failed_build_leaves_pytorch_attention_with_the_reason(tmp_path):
    with pytest.warns(UserWarning, match="did not build.*-fno-such-flag"):
        assert load_decode_attention(tmp_path, flag_sets=(("-fno-such-flag",),)) is None
    assert not any(Path(tmp_path).glob("decode-attention-*/*.so"))


@needs_compiler
def test_the_build_is_cached(tmp_path):
    first = load_decode_attention(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = load_decode_attention(tmp_path)
    assert first is not None and second is not None and first.library == second.library
    assert len(list(tmp_path.glob("decode-attention-*"))) == 1
