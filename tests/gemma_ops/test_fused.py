"""The CPU speed paths: fused kernels (compiled or eager), prepacked linears, grouped prefill attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gemma_ops.attention import Segment
from gemma_ops.fused import Kernels, add_norm, first_max, gelu_mul, gelu_mul_by_sigmoid, qk_norm_rope, rms_norm
from gemma_ops.prepack import PackedLinear, can_prepack
from gemma_ops.weights import load_model

needs_bf16_onednn = pytest.mark.skipif(
    not can_prepack(torch.device("cpu"), torch.bfloat16), reason="oneDNN runs no native bfloat16 on this CPU"
)


def _random(*shape: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_eager_kernels_compute_gemma_norms_gating_and_rope():
    x, w = _random(5, 8, seed=1, dtype=torch.float32), _random(8, seed=2, dtype=torch.float32)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), expected)
    h, out = _random(5, 8, seed=3, dtype=torch.float32), _random(5, 8, seed=4, dtype=torch.float32)
    summed, normed = add_norm(h, out, w, w, 1e-6)
    torch.testing.assert_close(summed, h + rms_norm(out, w, 1e-6))
    torch.testing.assert_close(normed, rms_norm(summed, w, 1e-6))
    assert add_norm(h, out, None, None, 1e-6)[1] is None
    gate_up = _random(3, 6, seed=5, dtype=torch.float32)
    torch.testing.assert_close(gelu_mul(gate_up), F.gelu(gate_up[:, :3], approximate="tanh") * gate_up[:, 3:])
    # RoPE at angle 0 (cos 1, sin 0) leaves q and k as normed; v passes through untouched.
    qkv = _random(2, 4 * 4, seed=6, dtype=torch.float32)  # 2 heads, 1 kv head, head_dim 4
    cos, sin = torch.ones(2, 1, 4), torch.zeros(2, 1, 4)
    q, _, v = qk_norm_rope(qkv, torch.zeros(4), torch.zeros(4), cos, sin, 2, 1, 1e-6)
    torch.testing.assert_close(q, F.rms_norm(qkv[:, :8].view(2, 2, 4), (4,), eps=1e-6))
    torch.testing.assert_close(v, qkv[:, 12:].view(2, 1, 4))
    # A quarter turn: sin 1 on the second half, -1 on the first (the sign-folded table) swaps the halves.
    q, _, _ = qk_norm_rope(qkv, None, None, torch.zeros(2, 1, 4), torch.tensor([-1.0, -1, 1, 1]), 2, 1, 1e-6)
    raw = qkv[:, :8].view(2, 2, 4)
    torch.testing.assert_close(q, torch.cat((-raw[..., 2:], raw[..., :2]), -1))


def test_gelu_by_sigmoid_is_gelu_tanh():
    """The compiled gating's form: gelu_tanh in float32 up to rounding; in bfloat16 at most one rounding step from
    eager's, on few outputs, or a tiny value where eager's 1 + tanh(u) cancels to 0 (gate below about -5)."""
    x32 = torch.randn(4, 50_000, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(gelu_mul_by_sigmoid(x32), gelu_mul(x32))
    x16 = x32.to(torch.bfloat16)
    got, want = gelu_mul_by_sigmoid(x16).float(), gelu_mul(x16).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=2**-7)
    assert ((got - want).abs() > 1e-5).float().mean() < 1e-3


def test_compiled_gating_is_one_rounding_step_from_eager_on_few_outputs():
    """The figure fused.gelu_mul_by_sigmoid states: about 1 in 18,000 normally distributed gates (5.6e-5)."""
    kernels = Kernels(compiled=True)
    gate_up = _random(512, 8192, seed=11)
    got, want = kernels.gelu_mul(gate_up), gelu_mul(gate_up)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=2**-7)  # atol: tiny values where eager cancels to 0
    assert 0 < (got != want).float().mean() < 1e-4
    assert kernels.compiled, kernels.failure


def test_a_failing_compiled_kernel_falls_back_to_eager_with_one_warning():
    kernels = Kernels(compiled=True)

    def broken(*args):
        raise RuntimeError("no C++ compiler\nlong log")

    kernels._fns = {name: broken for name in kernels._fns}
    x, w = _random(4, 8, seed=1), _random(8, seed=2)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        out = kernels.rms_norm(x, w, 1e-6)
    assert torch.equal(out, rms_norm(x, w, 1e-6))
    assert not kernels.compiled and kernels.failure == "RuntimeError: no C++ compiler"
    assert torch.equal(kernels.gelu_mul(_random(4, 8, seed=3)), gelu_mul(_random(4, 8, seed=3)))  # no new warning


def test_compiled_kernels_round_like_eager():
    """emulate_precision_casts: bfloat16 intermediates are rounded where eager rounds them."""
    kernels = Kernels(compiled=True)
    gate_up, qkv = _random(7, 32, seed=1), _random(7, 6 * 8, seed=2)  # 4 heads, 1 kv head, head_dim 8
    cos, sin = _random(7, 1, 8, seed=3), _random(7, 1, 8, seed=4)
    qw, kw = _random(8, seed=5), _random(8, seed=6)
    torch.testing.assert_close(kernels.gelu_mul(gate_up), gelu_mul(gate_up), atol=1e-5, rtol=2**-7)
    fused, eager = (f(qkv, qw, kw, cos, sin, 4, 1, 1e-6) for f in (kernels.qk_norm_rope, qk_norm_rope))
    for got, want in zip(fused, eager, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=2**-7)  # at most one bfloat16 rounding step apart
    h, out, w = _random(7, 16, seed=7), _random(7, 16, seed=8), _random(16, seed=9)
    for got, want in zip(kernels.add_norm(h, out, w, w, 1e-6), add_norm(h, out, w, w, 1e-6), strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=2**-7)
    assert kernels.compiled, kernels.failure


@needs_bf16_onednn
def test_packed_linear_gives_the_products_of_f_linear():
    linear = torch.nn.Linear(64, 96, bias=False).to(torch.bfloat16)
    x = _random(10, 64, seed=1)
    assert torch.equal(PackedLinear(linear, rows_hint=8)(x), F.linear(x, linear.weight))


@needs_bf16_onednn
def test_prepacked_model_gives_the_same_logits(tiny_checkpoints):
    plain = load_model(tiny_checkpoints["gemma3"], "cpu", torch.bfloat16)
    packed = load_model(tiny_checkpoints["gemma3"], "cpu", torch.bfloat16)
    packed.prepack(rows_hint=4)
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.layers.modules())
    tokens = torch.randint(10, 5000, (9,), generator=torch.Generator().manual_seed(0))
    for model in (plain, packed):
        model.init_rope(32)
    logits = [m.logits(m.forward_packed(tokens, torch.arange(9), [Segment(0, 9)])) for m in (plain, packed)]
    assert torch.equal(logits[0], logits[1])


def test_grouped_prefill_attention_equals_sdpa(tiny_checkpoints):
    """The CPU prefill path (two matmuls per bucket) against scaled_dot_product_attention, causal and masked."""
    model = load_model(tiny_checkpoints["gemma3"], "cpu", torch.float32)
    attn = model.layers[0].attn
    q = _random(3, attn.heads, 6, attn.head_dim, seed=1, dtype=torch.float32)
    k, v = (_random(3, attn.kv_heads, 6, attn.head_dim, seed=s, dtype=torch.float32) for s in (2, 3))
    gqa = attn.heads != attn.kv_heads
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=gqa)
    torch.testing.assert_close(attn._attend(q, k, v, None, causal=True), want)
    mask = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.5
    mask[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=gqa)
    torch.testing.assert_close(attn._attend(q, k, v, mask, causal=True), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_causal_prefill_attention_equals_the_whole_square(tiny_checkpoints, dtype):
    """Plain causal attention in query blocks (each against its own keys only) against one masked square."""
    model = load_model(tiny_checkpoints["gemma3"], "cpu", dtype)
    attn = model.layers[0].attn
    length = 150  # 4 blocks of 37-38 queries
    q = _random(2, attn.heads, length, attn.head_dim, seed=1, dtype=dtype)
    k, v = (_random(2, attn.kv_heads, length, attn.head_dim, seed=s, dtype=dtype) for s in (2, 3))
    square = torch.ones(length, length, dtype=torch.bool).tril()
    assert torch.equal(attn._attend(q, k, v, None, causal=True), attn._grouped_matmuls(q, k, v, square))


def test_compiled_greedy_takes_each_rows_first_maximum():
    kernels = Kernels(compiled=True)
    logits = _random(5, 3000, seed=1)
    logits[1, 7] = logits[1, 2000] = 50.0  # a tie: the first index wins
    logits[2] = float("-inf")
    logits[2, 2999] = 0.0  # a row masked down to its last token (a grammar's choice)
    for rows in (logits, logits[3:4]):  # several rows, and one (compiled apart)
        assert torch.equal(kernels.greedy(rows), torch.argmax(rows, dim=-1))
        assert torch.equal(kernels.greedy(rows), first_max(rows))
    assert kernels.greedy(logits)[1:3].tolist() == [7, 2999]
    assert kernels.compiled, kernels.failure
