"""The static-shape decode step (gemma_ops.decode_graphs) equals the dynamic one: logits, cache writes and engine
output, on tiny random checkpoints in float32. The CPU runs it eagerly; the CUDA tests capture and replay graphs."""

from __future__ import annotations

import weakref

import pytest
import torch

from gemma_ops import GemmaEngine, SamplingParams
from gemma_ops.decode_graphs import (
    CUDA_GRAPHS,
    DYNAMIC,
    STATIC,
    DecodeStep,
    batch_bucket,
    batch_buckets,
    decode_mode,
    key_bucket,
)
from gemma_ops.kv_cache import KVCache
from gemma_ops.model import Segment
from gemma_ops.weights import load_model
from tests.gemma_ops.test_engine import _ids
from tests.gemma_ops.test_serving import _calls, _outcome, concurrently
from tests.tiny_models import FAMILIES, WINDOW

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_buckets():
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 96, 100)
    assert batch_buckets(3) == (1, 2, 3)
    assert batch_buckets(1) == (1,)
    assert [batch_bucket(n, 100) for n in (1, 3, 5, 17, 33, 97, 100)] == [1, 4, 8, 32, 64, 100, 100]
    assert [key_bucket(n, 256, 1000) for n in (1, 256, 257, 768, 769, 1000)] == [256, 256, 512, 768, 1000, 1000]
    lengths = (1, 64, 65, 512, 513, 577, 1025, 4000, 4096)
    assert [key_bucket(n, 64, 4096) for n in lengths] == [64, 64, 128, 512, 576, 640, 1152, 4096, 4096]
    assert all(0 <= key_bucket(n, 64, 4096) - n < max(64, n / 8) for n in range(1, 4097))  # <= 12.5% extra
    with pytest.raises(ValueError, match="does not fit a cache of 4 slots"):
        batch_bucket(5, 4)
    with pytest.raises(ValueError, match="needs 65 keys; the cache holds 64"):
        key_bucket(65, 16, 64)


def test_decode_mode_defaults_to_graphs_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [decode_mode(None, cpu), decode_mode(True, cpu), decode_mode(False, cpu)] == [DYNAMIC, STATIC, DYNAMIC]
    assert [decode_mode(None, cuda), decode_mode(True, cuda), decode_mode(False, cuda)] == [
        CUDA_GRAPHS,
        CUDA_GRAPHS,
        DYNAMIC,
    ]


def test_cuda_graphs_refuse_a_cpu_model(tiny_checkpoints):
    model = load_model(tiny_checkpoints["gemma-mqa"], "cpu", torch.float32)
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        DecodeStep(model, CUDA_GRAPHS)
    with pytest.raises(ValueError, match="unknown decode mode 'fast'"):
        DecodeStep(model, "fast")


def _prefilled(model, prompts: list[list[int]], slots: int, device: str) -> KVCache:
    cache = KVCache(model.config, max_slots=slots, max_context=64, device=device, dtype=torch.float32)
    tokens = torch.tensor([t for p in prompts for t in p], device=device)
    positions = torch.cat([torch.arange(len(p)) for p in prompts]).to(device)
    segments, start = [], 0
    for slot, prompt in enumerate(prompts):
        segments.append(Segment(start, len(prompt), slot=slot))
        start += len(prompt)
    model.forward_packed(tokens, positions, segments, cache)
    return cache


def _compare_steps(model, static: DecodeStep, device: str) -> set[tuple[int, int]]:
    """Three requests of mixed lengths (one past the sliding window from the start, one crossing it) decode side
    by side through the dynamic step and ``static``, each on its own cache; the batch shrinks to 2, then 1.
    Every step's logits and every written cache entry of the running slots must agree. Returns the (batch,
    keys) shapes the static step ran."""
    dynamic = DecodeStep(model, DYNAMIC)
    seqs = [_ids(1, 2 * WINDOW + 20), _ids(2, WINDOW + 22), _ids(3, 24)]
    prompt_lens = [2 * WINDOW + 1, WINDOW - 2, 4]
    prompts = [s[:n] for s, n in zip(seqs, prompt_lens, strict=True)]
    caches = [_prefilled(model, prompts, slots=5, device=device) for _ in range(2)]
    shapes = set()
    for step in range(18):
        running = 3 if step < 8 else 2 if step < 14 else 1
        positions = [n + step for n in prompt_lens[:running]]
        tokens = [seq[p] for seq, p in zip(seqs[:running], positions, strict=True)]
        shapes.add((batch_bucket(running, 5), key_bucket(max(positions) + 1, static.key_block, 64)))
        with torch.inference_mode():
            expected = model.logits(dynamic.step(tokens, positions, caches[0]))
            got = model.logits(static.step(tokens, positions, caches[1]))
        assert got.shape == expected.shape == (running, model.config.vocab_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for layer in range(model.config.num_layers):  # slot 2 ran 14 steps, slot 1 16, slot 0 18
        for slot, n in enumerate(prompt_lens):
            written = min(n + (18, 16, 14)[slot], caches[0].capacity(layer))
            for static_side, dynamic_side in (caches[1].keys, caches[0].keys), (caches[1].values, caches[0].values):
                torch.testing.assert_close(
                    static_side[layer][slot, :, :written], dynamic_side[layer][slot, :, :written]
                )
    assert dynamic.stats.steps == static.stats.steps == 18
    return shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_static_step_equals_dynamic_step(tiny_checkpoints, family):
    """Padded batches (3 of 5 slots -> 4 rows) and key lengths in blocks of 8, under the mask, on the CPU."""
    model = load_model(tiny_checkpoints[family], "cpu", torch.float32)
    model.init_rope(64)
    shapes = _compare_steps(model, DecodeStep(model, STATIC, key_block=8), "cpu")
    assert {batch for batch, _ in shapes} == {4, 2, 1} and {keys for _, keys in shapes} == {24, 32, 40}


def test_static_step_follows_a_reallocated_cache(tiny_checkpoints):
    """Buffers belong to one cache: a larger cache gets new ones, and the old cache is not kept alive."""
    model = load_model(tiny_checkpoints["gemma3"], "cpu", torch.float32)
    model.init_rope(64)
    static, dynamic = DecodeStep(model, STATIC, key_block=8), DecodeStep(model, DYNAMIC)
    prompts = [_ids(50 + i, 3 + 4 * i) for i in range(5)]
    small = _prefilled(model, prompts[:2], slots=2, device="cpu")
    with torch.inference_mode():
        static.step([7, 8], [3, 7], small)
    gone = weakref.ref(small)
    del small
    assert gone() is None
    caches = [_prefilled(model, prompts, slots=6, device="cpu") for _ in range(2)]
    positions = [len(p) for p in prompts]
    with torch.inference_mode():
        got = model.logits(static.step([9, 10, 11, 12, 13], positions, caches[0]))  # 5 rows: bucket 6
        expected = model.logits(dynamic.step([9, 10, 11, 12, 13], positions, caches[1]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _generate_both(path, device: str, prompts, params, max_slots: int = 6):
    outs, stats = [], []
    for graphs in (False, True):
        engine = GemmaEngine.from_pretrained(
            path, device=device, dtype="float32", max_slots=max_slots, max_context=512, decode_graphs=graphs
        )
        outs.append([(c.token_ids, c.finish_reason, c.text) for c in engine.generate(prompts, params)])
        stats.append(engine.decoder.stats)
    return outs, stats


def _mixed_requests():
    prompts = [_ids(10 + i, n) for i, n in enumerate([4, 17, 9, 2, 25, 11, 6])]
    params = [SamplingParams(max_new_tokens=m, ignore_eos=True) for m in [3, 12, 5, 9, 2, 7, 10]]
    params[2] = SamplingParams(max_new_tokens=14, temperature=0.9, top_p=0.9, seed=5, ignore_eos=True)
    params[5] = SamplingParams(max_new_tokens=11, temperature=1.2, top_k=20, ignore_eos=True)
    return prompts, params


@pytest.mark.parametrize("family", ["gemma-mqa", "gemma2", "gemma3"])
def test_engine_output_is_unchanged_with_the_static_step_forced_on_cpu(tiny_checkpoints, family):
    """7 prompts through 6 slots (a refill, greedy and seeded sampling; 5 or 3 running requests pad to buckets 6, 4,
    padded rows decoding in free slots): the same tokens either way."""
    prompts, params = _mixed_requests()
    (dynamic, static), (dynamic_stats, static_stats) = _generate_both(tiny_checkpoints[family], "cpu", prompts, params)
    assert static == dynamic
    assert [len(tokens) for tokens, _, _ in static] == [3, 12, 14, 9, 2, 11, 10]
    assert static_stats.steps == dynamic_stats.steps > 0
    assert static_stats.padded_rows > 0 and dynamic_stats.padded_rows == 0


def test_a_serving_engine_with_the_static_step_answers_as_the_dynamic_engine(tiny_checkpoints):
    """Two generate calls from two threads share the loop's running batch (padded, masked) on the static step."""
    path = tiny_checkpoints["gemma3"]
    plain = GemmaEngine.from_pretrained(path, device="cpu", dtype="float32", max_slots=5, max_context=96)
    expected = [_outcome(call()) for call in _calls(plain)[:2]]
    serving = GemmaEngine.from_pretrained(
        path, device="cpu", dtype="float32", max_slots=5, max_context=96, decode_graphs=True
    )
    serving.serve()
    got = concurrently(_calls(serving)[:2])
    serving.close()
    assert got == expected
    assert serving.decoder.stats.steps > 0 and serving.decoder.stats.padded_rows > 0


# ----------------------------------------------------------------------------------------- CUDA only
@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_graph_replays_equal_the_dynamic_step(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family], "cuda", torch.float32)
    model.init_rope(64)
    graphs = DecodeStep(model, CUDA_GRAPHS, key_block=8)
    shapes = _compare_steps(model, graphs, "cuda")
    assert graphs.stats.graphs_captured == graphs.stats.graphs_held == len(shapes) == 5  # one per shape, kept


@needs_cuda
def test_engine_graphs_are_recaptured_when_the_cache_is_reallocated(tiny_checkpoints):
    """Two prompts size the cache at 2 slots; the next call needs 3 and reallocates it: outputs stay equal."""
    path = tiny_checkpoints["gemma3"]
    prompts, params = _mixed_requests()
    engines = [
        GemmaEngine.from_pretrained(path, device="cuda", dtype="float32", max_slots=3, decode_graphs=graphs)
        for graphs in (False, True)
    ]
    for call in (slice(0, 2), slice(None)):
        outs = [[c.token_ids for c in e.generate(prompts[call], params[call])] for e in engines]
        assert outs[1] == outs[0]
    stats = engines[1].decoder.stats
    assert stats.mode == CUDA_GRAPHS
    assert stats.graphs_captured > stats.graphs_held > 0  # the first cache's graphs were dropped
