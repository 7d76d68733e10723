"""Engine behaviour on tiny random checkpoints (float32): caching, batching, sampling, scoring, bad requests."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from gemma_ops import GemmaEngine, SamplingParams
from gemma_ops.kv_cache import KVCache
from gemma_ops.model import Segment
from tests.tiny_models import WINDOW


@pytest.fixture(scope="module", params=["gemma-mqa", "gemma2", "gemma3"])
def engine(request, tiny_checkpoints) -> GemmaEngine:
    return GemmaEngine.from_pretrained(
        tiny_checkpoints[request.param], device="cpu", dtype="float32", max_slots=3, max_context=64
    )


def _ids(seed: int, n: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [2, *torch.randint(10, 5000, (n - 1,), generator=generator).tolist()]


def _full_logits(engine: GemmaEngine, ids: list[int]) -> torch.Tensor:
    model = engine.model
    return model.logits(model.forward_packed(torch.tensor(ids), torch.arange(len(ids)), [Segment(0, len(ids))]))


def test_cached_decoding_equals_full_recomputation(engine):
    """Two slots of different lengths decode past the sliding window; every step's logits equal a full pass."""
    model, config = engine.model, engine.model.config
    cache = KVCache(config, max_slots=2, max_context=64, device="cpu", dtype=torch.float32)
    seqs = [_ids(1, 3 * WINDOW + 6), _ids(2, WINDOW + 9)]
    prompt_lens = [5, 3]  # then decode the rest one token per step, crossing the window
    tokens = torch.tensor(seqs[0][: prompt_lens[0]] + seqs[1][: prompt_lens[1]])
    positions = torch.cat([torch.arange(n) for n in prompt_lens])
    model.forward_packed(tokens, positions, [Segment(0, 5, slot=0), Segment(5, 3, slot=1)], cache)
    step_logits: list[list[torch.Tensor]] = [[], []]
    for step in range(len(seqs[1]) - prompt_lens[1]):
        pos = [prompt_lens[0] + step, prompt_lens[1] + step]
        step_tokens = torch.tensor([seqs[0][pos[0]], seqs[1][pos[1]]])
        hidden = model.forward_step(step_tokens, torch.tensor(pos), cache, max(pos) + 1)
        logits = model.logits(hidden)
        step_logits[0].append(logits[0])
        step_logits[1].append(logits[1])
    for i, seq in enumerate(seqs):
        start = prompt_lens[i]
        full = _full_logits(engine, seq)[start : start + len(step_logits[i])]
        torch.testing.assert_close(torch.stack(step_logits[i]), full, atol=2e-4, rtol=1e-4)


def test_greedy_tokens_follow_full_forward_argmax(engine):
    prompt = _ids(3, 6)
    out = engine.generate([prompt], SamplingParams(max_new_tokens=2 * WINDOW, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 2 * WINDOW
    full = _full_logits(engine, prompt + list(out.token_ids))
    expected = full[len(prompt) - 1 : -1].argmax(-1).tolist()
    assert list(out.token_ids) == expected


def test_batched_equals_one_by_one_with_slot_refill(engine):
    """7 prompts through 3 slots: finished requests free slots that are refilled, results stay in order."""
    prompts = [_ids(10 + i, n) for i, n in enumerate([4, 17, 9, 2, 25, 11, 6])]
    params = [SamplingParams(max_new_tokens=m, ignore_eos=True) for m in [3, 12, 5, 9, 2, 7, 10]]
    together = engine.generate(prompts, params)
    alone = [engine.generate([p], q)[0] for p, q in zip(prompts, params, strict=True)]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [len(c.token_ids) for c in together] == [3, 12, 5, 9, 2, 7, 10]
    assert [c.prompt_tokens for c in together] == [4, 17, 9, 2, 25, 11, 6]


def test_top_k_one_sampling_equals_greedy(engine):
    prompts = [_ids(20, 7), _ids(21, 12)]
    greedy = engine.generate(prompts, SamplingParams(max_new_tokens=10, ignore_eos=True))
    top1 = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.5, top_k=1, ignore_eos=True))
    assert [c.token_ids for c in top1] == [c.token_ids for c in greedy]


def test_seeded_sampling_is_independent_of_the_batch(engine):
    target = _ids(30, 8)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=42, ignore_eos=True)
    alone = engine.generate([target], params)[0]
    others = [_ids(31 + i, 5 + 3 * i) for i in range(4)]
    mixed = engine.generate(
        [*others[:2], target, *others[2:]],
        [SamplingParams(max_new_tokens=4, temperature=0.7, seed=i) for i in range(2)]
        + [params]
        + [SamplingParams(max_new_tokens=20, ignore_eos=True) for _ in range(2)],
    )[2]
    assert mixed.token_ids == alone.token_ids
    other_seed = engine.generate([target], SamplingParams(**{**params.__dict__, "seed": 43}))[0]
    assert other_seed.token_ids != alone.token_ids  # the seed really drives the draw


def test_score_equals_full_forward_log_probabilities(engine):
    candidates = [" positive", " very negative", " neutral"]
    prompts = ["Review: great food.\nSentiment:", _ids(40, 2 * WINDOW)]
    scores = engine.score(prompts, candidates)
    restricted = engine.score(prompts, candidates, restrict_vocab=True)
    tokenizer = engine.tokenizer
    cand_ids = [tokenizer.encode(c, add_bos=False) for c in candidates]
    assert len(cand_ids[1]) >= 2  # a multi-token candidate exercises the branch positions
    vocab_rows = sorted({t for ids in cand_ids for t in ids})
    for prompt, row, row_restricted in zip(prompts, scores, restricted, strict=True):
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        assert row.prompt_tokens == len(ids)
        for j, cand in enumerate(cand_ids):
            full = _full_logits(engine, ids + cand).double()
            steps = range(len(ids) - 1, len(ids) + len(cand) - 1)
            expected = sum(torch.log_softmax(full[s], -1)[t] for s, t in zip(steps, cand, strict=True))
            assert row[j] == pytest.approx(float(expected), abs=1e-4)
            expected_restricted = sum(
                torch.log_softmax(full[s][vocab_rows], -1)[vocab_rows.index(t)]
                for s, t in zip(steps, cand, strict=True)
            )
            assert row_restricted[j] == pytest.approx(float(expected_restricted), abs=1e-4)


def test_score_matches_transformers(tiny_checkpoints):
    path = tiny_checkpoints["gemma3"]
    engine = GemmaEngine.from_pretrained(path, device="cpu", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = "The movie was"
    ids = engine.tokenizer.encode(prompt)
    cand = engine.tokenizer.encode(" really good", add_bos=False)
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(torch.tensor([ids + cand])).logits[0].double(), -1)
    expected = sum(logprobs[len(ids) - 1 + j, t] for j, t in enumerate(cand))
    assert engine.score([prompt], [" really good"])[0][0] == pytest.approx(float(expected), abs=1e-4)


def test_bad_requests_fail_alone(engine):
    too_long = _ids(50, 70)  # engine context is 64
    outs = engine.generate(["", _ids(51, 5), too_long, [], "   "], SamplingParams(max_new_tokens=3))
    assert [o.finish_reason for o in outs][1] in ("length", "stop")
    assert [o.finish_reason for o in outs[:1] + outs[2:]] == ["error"] * 4
    assert "empty prompt" in outs[0].error and "empty prompt" in outs[3].error
    assert "exceeds the engine's context of 64 tokens" in outs[2].error
    assert outs[1].error is None and len(outs[1].token_ids) >= 1
    scores = engine.score(["", "fine", too_long], [" yes", " no"])
    assert scores[0].error and scores[2].error and scores[1].error is None
    assert len(scores[1]) == 2 and all(v < 0 for v in scores[1])


def test_generation_stops_at_context_end_and_stop_strings(engine):
    prompt = _ids(60, 60)
    out = engine.generate([prompt], SamplingParams(max_new_tokens=50, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 64 - 60
    free = engine.generate([_ids(61, 4)], SamplingParams(max_new_tokens=12, ignore_eos=True))[0]
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    assert stop  # the tiny model produced text to cut
    cut = engine.generate([_ids(61, 4)], SamplingParams(max_new_tokens=12, ignore_eos=True, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    # token_ids end with the token that completes the kept text, not with everything generated after it
    kept = engine.tokenizer.decode(cut.token_ids)
    assert kept.startswith(cut.text) and len(cut.token_ids) < len(free.token_ids)
    if cut.text:  # the last kept token is the one that completes the text
        assert len(engine.tokenizer.decode(cut.token_ids[:-1])) < len(cut.text)
    else:  # the output began with the stop string
        assert cut.token_ids == ()


def test_scoring_fits_a_prompt_that_uses_the_whole_context(engine):
    prompt = _ids(95, 63)  # 63 tokens + a 2-token candidate: the candidate's last token is never fed
    cand = " very negative"
    assert len(engine.tokenizer.encode(cand, add_bos=False)) == 2
    row = engine.score([prompt], [cand])[0]
    assert row.error is None and row[0] < 0
    assert engine.score([_ids(96, 64)], [cand])[0].error  # one more token does not fit


def test_score_with_a_shared_prefix_equals_full_forward_in_any_batch(engine):
    """A shared few-shot prefix (longer than the sliding window) is computed once; same values as a full pass,
    and a prompt's scores do not depend on which other prompts share the call (beyond float rounding)."""
    shared = _ids(70, 3 * WINDOW)
    prompts = [shared + _ids(71 + i, 2 + i)[1:] for i in range(3)]
    candidates = [" yes", " no way"]
    engine._scorer.prefixes.clear()
    scores = engine.score(prompts, candidates, shared_prefix=shared)
    assert [p.tokens for p in engine._scorer.prefixes] == [tuple(shared)]  # computed once, kept for later calls
    cand_ids = [engine.tokenizer.encode(c, add_bos=False) for c in candidates]
    for prompt, row in zip(prompts, scores, strict=True):
        for j, cand in enumerate(cand_ids):
            full = _full_logits(engine, prompt + cand).double()
            steps = range(len(prompt) - 1, len(prompt) + len(cand) - 1)
            expected = sum(torch.log_softmax(full[s], -1)[t] for s, t in zip(steps, cand, strict=True))
            assert row[j] == pytest.approx(float(expected), abs=1e-4)
    alone = engine.score([prompts[1]], candidates, shared_prefix=shared)[0]
    mixed = engine.score([_ids(99, 30), prompts[1], shared], candidates, shared_prefix=shared)
    # The split point is the caller's, not the batch's: only float rounding of different batch shapes remains.
    assert alone.logprobs == pytest.approx(scores[1].logprobs, abs=1e-5)
    assert mixed[1].logprobs == pytest.approx(scores[1].logprobs, abs=1e-5)
    assert mixed[2].error is None  # a prompt equal to the prefix is scored whole


def test_unseeded_sampling_is_reproducible_and_position_independent(engine):
    target = _ids(80, 9)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, ignore_eos=True)
    first = engine.generate([target, _ids(81, 4)], params)[0]
    later = engine.generate([_ids(82, 6), _ids(83, 3), target], params)[2]
    assert first.token_ids == later.token_ids


def test_cache_slots_are_capped_by_free_memory(tiny_checkpoints, monkeypatch):
    import gemma_ops.device as device_module
    from gemma_ops.kv_cache import KVCache

    engine = GemmaEngine.from_pretrained(
        tiny_checkpoints["gemma3"], device="cpu", dtype="float32", max_slots=16, max_context=64
    )
    per_slot = KVCache.bytes_needed(engine.model.config, 1, 64, 4)

    def free(device) -> int:  # the device's free memory goes down by what the cache holds
        cache = engine._caches.cache
        return int(3.5 * per_slot / 0.9) - (cache.max_slots * per_slot if cache else 0)

    monkeypatch.setattr(device_module, "free_memory_bytes", free)
    prompts = [_ids(90 + i, 5) for i in range(7)]
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    outs = engine.generate(prompts, params)
    capped = engine._caches.cache
    assert capped.max_slots == 3  # 7 requests ran through the 3 slots that fit
    assert [o.token_ids for o in outs] == [engine.generate([p], params)[0].token_ids for p in prompts]
    engine.generate(prompts, params)
    assert engine._caches.cache is capped  # later calls keep the capped cache instead of re-sizing it every time
    monkeypatch.setattr(device_module, "free_memory_bytes", lambda device: per_slot // 2)
    engine._caches.cache = None
    with pytest.raises(MemoryError, match="lower max_context"):
        engine.generate(prompts[:1], params)


def test_two_copies_on_one_device_never_size_their_caches_against_the_same_free_memory(tiny_checkpoints, monkeypatch):
    """Two model copies share a device and run their first calls at the same moment (two processes: neither
    probe sees the other's cache yet). Each copy's budget was fixed at load, one copy at a time, so together
    they stay within the free memory instead of taking 90% of it each."""
    import gemma_ops.device as device_module
    from gemma_ops.config import GemmaConfig
    from gemma_ops.kv_cache import KVCache

    per_slot = KVCache.bytes_needed(GemmaConfig.from_pretrained(tiny_checkpoints["gemma3"]), 1, 64, 4)
    free = 20 * per_slot
    monkeypatch.setattr(device_module, "free_memory_bytes", lambda device: free)
    copies = [
        GemmaEngine.from_pretrained(
            tiny_checkpoints["gemma3"], device="cpu", dtype="float32", max_slots=16, max_context=64, cache_shared_by=2
        )
        for _ in range(2)
    ]
    params = SamplingParams(max_new_tokens=2, ignore_eos=True)
    for copy in copies:  # the probe still says `free`: the other copy's cache is not visible to it
        copy.generate([_ids(100 + i, 5) for i in range(16)], params)
    taken = sum(copy._caches.cache.max_slots * per_slot for copy in copies)
    assert taken <= 0.9 * free and [copy._caches.cache.max_slots for copy in copies] == [9, 9]


def test_a_cache_capped_by_memory_grows_once_memory_is_freed(tiny_checkpoints, monkeypatch):
    import gemma_ops.device as device_module
    from gemma_ops.kv_cache import KVCache

    engine = GemmaEngine.from_pretrained(
        tiny_checkpoints["gemma3"], device="cpu", dtype="float32", max_slots=8, max_context=64
    )
    per_slot = KVCache.bytes_needed(engine.model.config, 1, 64, 4)
    prompts = [_ids(120 + i, 5) for i in range(8)]
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    monkeypatch.setattr(device_module, "free_memory_bytes", lambda device: int(2.5 * per_slot / 0.9))
    capped = engine.generate(prompts, params)
    assert engine._caches.cache.max_slots == 2 and engine._caches.at_memory_limit
    monkeypatch.setattr(device_module, "free_memory_bytes", lambda device: 100 * per_slot)  # another copy freed it
    assert engine.generate(prompts, params) == capped  # same results, now in one pass
    assert engine._caches.cache.max_slots == 8 and not engine._caches.at_memory_limit
