"""The engine loop without a model: requests of separate calls share one continuous batch, failures stay with the
calls they hit, jobs run between steps, the thread ends when idle and after close."""

from __future__ import annotations

import threading
import time

import pytest

from gemma_ops.engine_loop import EngineLoop, LoopParts, RequestSpec
from gemma_ops.finish import Finish
from gemma_ops.sampling import SamplingParams
from gemma_ops.scheduler import Batch, Request
from tests.gemma_ops.test_scheduler import FakeCache


class FakeModel:
    """Each request's next token is its prompt's first id plus the tokens it has; it records every batch."""

    def __init__(self, slots: int, poison: int | None = None) -> None:
        self.cache = FakeCache(slots)
        self.batches: list[tuple[bool, tuple[int, ...]]] = []  # (prefill, first prompt id of each request)
        self.poison = poison  # a prompt whose decode steps raise

    def parts(self) -> LoopParts:
        build = lambda spec: Request(spec.index, spec.prompt, spec.params, None)  # noqa: E731
        return LoopParts(build, self.run, lambda: self.cache, lambda ids: " ".join(map(str, ids)), 100)

    def run(self, batch: Batch, cache: FakeCache) -> None:
        self.batches.append((batch.prefill, tuple(r.prompt[0] for r in batch.requests)))
        if not batch.prefill and any(r.prompt[0] == self.poison for r in batch.requests):
            raise ValueError("poisoned step")
        for request in batch.requests:
            request.append(request.prompt[0] + len(request.output))
            if len(request.output) == request.params.max_new_tokens:
                request.finish(Finish("length"))


def _spec(index: int, first: int, new_tokens: int) -> RequestSpec:
    return RequestSpec(index, [first, 1, 1], SamplingParams(max_new_tokens=new_tokens))


def _hold(loop: EngineLoop) -> threading.Event:
    """Block the loop thread on a job until the returned event is set (so several calls queue up meanwhile)."""
    release, holding = threading.Event(), threading.Event()
    threading.Thread(target=lambda: loop.call(lambda: (holding.set(), release.wait())), daemon=True).start()
    assert holding.wait(5)
    return release


def _in_threads(*calls) -> list:
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as err:  # the test compares it
            results[i] = err

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # calls arrive in this order
    return results, threads


def test_a_slot_freed_by_one_call_refills_with_the_next_calls_request():
    model = FakeModel(slots=2)
    loop = EngineLoop(model.parts())
    release = _hold(loop)
    (results, threads) = _in_threads(
        lambda: loop.generate([_spec(0, 100, 1), _spec(1, 200, 5)]),  # 100 ends at its prefill
        lambda: loop.generate([_spec(0, 300, 2)]),
    )
    release.set()
    for t in threads:
        t.join(5)
    first, second = results
    assert [c.token_ids for c in first] == [(100,), (200, 201, 202, 203, 204)]
    assert [c.token_ids for c in second] == [(300, 301)]
    # the second call's request took the freed slot while the first call's long request was still decoding
    assert model.batches == [
        (True, (100, 200)), (False, (200,)), (True, (300,)), (False, (200, 300)), (False, (200,)), (False, (200,))
    ]  # fmt: skip
    loop.close()


def test_a_failed_step_fails_only_the_calls_in_it():
    model = FakeModel(slots=1, poison=900)
    loop = EngineLoop(model.parts())
    release = _hold(loop)
    results, threads = _in_threads(
        lambda: loop.generate([_spec(0, 100, 2)]),
        lambda: loop.generate([_spec(0, 900, 3)]),  # waits for the slot, then its first decode step raises
        lambda: loop.generate([_spec(0, 500, 2)]),
    )
    release.set()
    for t in threads:
        t.join(5)
    assert [c.token_ids for c in results[0]] == [(100, 101)]
    assert isinstance(results[1], ValueError) and "poisoned" in str(results[1])
    assert [c.token_ids for c in results[2]] == [(500, 501)]  # took the slot the failed call freed
    loop.close()


def test_jobs_run_on_the_loop_thread_and_raise_in_their_caller():
    loop = EngineLoop(FakeModel(slots=2).parts())
    assert loop.call(lambda: threading.current_thread().name) == "gemma-engine-loop"
    with pytest.raises(KeyError, match="missing"):
        loop.call(lambda: {}["missing"])
    assert loop.call(lambda: loop.call(lambda: 7)) == 7  # a job's own call runs in place, never deadlocks
    loop.close()


def test_the_thread_ends_when_idle_and_starts_again_with_the_next_call():
    loop = EngineLoop(FakeModel(slots=2).parts(), idle_seconds=0.05)
    first = loop.call(threading.get_ident)
    deadline = time.monotonic() + 5
    while any(t.ident == first for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.ident == first for t in threading.enumerate())
    assert [c.token_ids for c in loop.generate([_spec(0, 40, 2)])] == [(40, 41)]
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.generate([_spec(0, 40, 1)])
