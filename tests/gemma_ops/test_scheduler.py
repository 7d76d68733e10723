"""Scheduler without a model: admission by slots and token budget, the prefill/decode order, slot compaction."""

from __future__ import annotations

import pytest

from gemma_ops.finish import Finish
from gemma_ops.sampling import SamplingParams
from gemma_ops.scheduler import Request, Scheduler


class FakeCache:
    """Just the slot count and the moves the scheduler asks for."""

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max_slots
        self.moves: list[tuple[int, int, int]] = []

    def move(self, src: int, dst: int, length: int) -> None:
        self.moves.append((src, dst, length))


def _requests(prompt_lengths: list[int]) -> list[Request]:
    return [Request(i, [2] * n, SamplingParams(), None) for i, n in enumerate(prompt_lengths)]


def _indices(requests) -> list[int]:
    return [r.index for r in requests]


def test_admission_fills_free_slots_within_the_token_budget():
    cache = FakeCache(max_slots=3)
    scheduler = Scheduler(_requests([4, 5, 2, 9, 1]), cache, max_batch_tokens=10)
    first = scheduler.schedule()
    assert first.prefill and _indices(first.requests) == [0, 1]  # 4 + 5 fit, + 2 would not
    assert [r.slot for r in first.requests] == [0, 1]
    for r in first.requests:
        r.append(7)
    second = scheduler.schedule()  # no second prefill in a row while requests are running
    assert not second.prefill and _indices(second.requests) == [0, 1]
    third = scheduler.schedule()
    assert third.prefill and _indices(third.requests) == [2]  # one free slot left
    assert third.requests[0].slot == 2


def test_a_prompt_longer_than_the_budget_runs_alone():
    scheduler = Scheduler(_requests([50, 3]), FakeCache(max_slots=4), max_batch_tokens=10)
    assert _indices(scheduler.schedule().requests) == [0]


def test_retire_keeps_running_requests_in_the_first_slots():
    cache = FakeCache(max_slots=4)
    scheduler = Scheduler(_requests([3, 3, 3, 3]), cache, max_batch_tokens=100)
    batch = scheduler.schedule()
    for r in batch.requests:
        r.append(7)
        r.append(8)  # last_position = 3 + 2 - 1 = 4
    batch.requests[1].finish(Finish("stop"))
    batch.requests[3].finish(Finish("length"))
    assert _indices(scheduler.retire()) == [1, 3]
    assert _indices(scheduler.running) == [0, 2]
    assert [r.slot for r in scheduler.running] == [0, 1]
    assert cache.moves == [(2, 1, 4)]  # request 2 moved into slot 1; slot 3 was last, nothing to move
    decode = scheduler.schedule()
    assert not decode.prefill and [r.slot for r in decode.requests] == [0, 1]


def test_schedule_ends_when_every_request_is_done():
    scheduler = Scheduler(_requests([2, 2]), FakeCache(max_slots=1), max_batch_tokens=100)
    seen = []
    while (batch := scheduler.schedule()) is not None:
        seen.append((batch.prefill, _indices(batch.requests)))
        for r in batch.requests:
            r.append(5)
            if len(r.output) == 2:
                r.finish(Finish("length"))
        scheduler.retire()
    assert seen == [(True, [0]), (False, [0]), (True, [1]), (False, [1])]


def test_a_stop_string_verdict_trims_the_output_and_ends_the_request():
    request = _requests([3])[0]
    for token in (5, 6, 7):
        request.append(token)
    request.finish(Finish("stop", text="kept", keep=1))
    completion = request.completion(lambda ids: "unused")
    assert (completion.text, completion.token_ids, completion.finish_reason) == ("kept", (5,), "stop")
    assert completion.prompt_tokens == 3
    with pytest.raises(RuntimeError, match="finished"):
        request.append(8)
