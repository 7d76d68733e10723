"""A serving engine (one loop thread, gemma_ops.engine_loop) answers calls from several threads at once exactly as
the same engine answers them one by one: generation (greedy, seeded sampling, bad prompts), scoring, branching."""

from __future__ import annotations

import threading

import pytest

from gemma_ops import GemmaEngine, SamplingParams
from tests.gemma_ops.test_branching import HEAD, LABELS, trees
from tests.gemma_ops.test_branching import _ids as ids
from tests.tiny_models import WINDOW

GREEDY = SamplingParams(max_new_tokens=WINDOW + 3, ignore_eos=True)
SHORT = SamplingParams(max_new_tokens=2, ignore_eos=True)
SAMPLED = SamplingParams(max_new_tokens=6, temperature=0.9, top_k=50, seed=11, ignore_eos=True)


def _engine(path) -> GemmaEngine:
    return GemmaEngine.from_pretrained(path, device="cpu", dtype="float32", max_slots=3, max_context=96)


def _calls(engine: GemmaEngine) -> list:
    """Four calls as four RunInference batches would make them; more requests than the engine has slots."""
    prompts = [[2, *ids(20 + i, 4 + 3 * i)] for i in range(5)]
    return [
        lambda: engine.generate(prompts[:3], [GREEDY, SHORT, SAMPLED]),
        lambda: engine.generate([prompts[3], [], prompts[4]], [SHORT, GREEDY, GREEDY]),  # [] is refused alone
        lambda: engine.score([list(HEAD + ids(40, 5)), list(HEAD + ids(41, 9))], LABELS, shared_prefix=HEAD),
        lambda: engine.branch(trees(engine), shared_prefix=HEAD),
    ]


def concurrently(calls: list) -> list:
    """Each call's outcome, the calls started together on threads of their own."""
    got: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, call):
        start.wait()
        got[i] = _outcome(call())

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return got


def _outcome(results) -> list:
    """What must match: tokens, texts and finish reasons; scores (float32) to 1e-5."""
    out = []
    for result in results:
        if isinstance(result, list):
            out.append(_outcome(result))
        elif hasattr(result, "logprobs"):
            out.append(("score", tuple(round(x, 5) for x in result.logprobs), result.error))
        else:
            out.append((result.token_ids, result.text, result.finish_reason, result.error))
    return out


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_concurrent_calls_on_a_serving_engine_answer_as_sequential_calls_do(tiny_checkpoints, family):
    plain = _engine(tiny_checkpoints[family])
    expected = [_outcome(call()) for call in _calls(plain)]
    serving = _engine(tiny_checkpoints[family])
    serving.serve()
    assert serving.concurrent_calls
    got = concurrently(_calls(serving))
    serving.close()
    assert got == expected
    assert got[1][1][3] == "empty prompt: nothing to condition on"
    assert not serving.concurrent_calls
    assert _outcome(serving.generate([[2, 7, 9]], SHORT)) == _outcome(plain.generate([[2, 7, 9]], SHORT))
