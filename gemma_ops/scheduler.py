"""Generation requests in flight and their KV-cache slots: admission by prefill token budget, retirement with
slot compaction.

The scheduler keeps the running requests in slots 0..n-1 (a freed slot takes the last running request), so a
decode step reads plain views of the cache instead of gathering scattered slots.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from gemma_ops.attention import PrefixKV
from gemma_ops.constraints import GrammarState
from gemma_ops.finish import Finish, StopStrings
from gemma_ops.kv_cache import KVCache
from gemma_ops.outputs import Completion, FinishReason
from gemma_ops.sampling import SamplingParams


@dataclass(eq=False)
class Request:
    """One generation request from admission to its Completion.

    Invariants: while running, ``slot`` is its index in ``Scheduler.running`` and that cache slot holds the keys
    and values of positions 0 .. last_position - 1 (the newest token is fed by the next step); ``output`` only
    grows until ``finish`` (a stop string may then trim it); a finished request takes no more tokens.
    """

    index: int  # position in the caller's list: results come back in input order
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None  # None for greedy requests
    stops: StopStrings | None = None  # its stop strings' matching state
    prefix: PrefixKV | None = None  # the prompt starts with these keys/values, computed already: not prefilled
    grammar: GrammarState | None = None  # params.json_schema's state: which tokens may come next
    slot: int = -1
    output: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    text: str | None = None  # set when a stop string cut the text

    @property
    def fed(self) -> list[int]:
        """The prompt tokens its prefill runs: those after its prefix."""
        return self.prompt[self.prefix.length :] if self.prefix is not None else self.prompt

    @property
    def last_position(self) -> int:
        """Position of the newest token (not yet in the cache)."""
        return len(self.prompt) + len(self.output) - 1

    @property
    def context_length(self) -> int:
        """Prompt and generated tokens: what the context must hold."""
        return len(self.prompt) + len(self.output)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, token: int) -> None:
        if self.finished:
            raise RuntimeError(f"request {self.index} is finished ({self.finish_reason}); it takes no more tokens")
        self.output.append(token)

    def finish(self, verdict: Finish) -> None:
        """End the request; a stop string's verdict also trims the output to the tokens that make the kept text."""
        self.finish_reason = verdict.reason
        self.text = verdict.text
        if verdict.keep is not None:
            del self.output[verdict.keep :]

    def completion(self, decode: Callable[[list[int]], str]) -> Completion:
        assert self.finish_reason is not None, "only a finished request has a completion"
        text = self.text if self.text is not None else decode(self.output)
        return Completion(text, tuple(self.output), self.finish_reason, len(self.prompt))


@dataclass(frozen=True)
class Batch:
    """What the model runs next: the prefill of newly admitted prompts, or one decode step of every running one
    (in slot order: ``requests[i].slot == i``)."""

    requests: tuple[Request, ...]
    prefill: bool


class Scheduler:
    """Waiting and running requests of one generate call over one KV cache.

    Admission fills free slots in arrival order while the step's prefill token budget lasts (a prompt longer than
    the budget is admitted alone). A refill's prefill never runs twice in a row while requests are decoding, so
    admitting new requests does not hold up the ones already decoding.
    """

    def __init__(self, requests: Iterable[Request], cache: KVCache, max_batch_tokens: int) -> None:
        self.waiting: deque[Request] = deque(requests)
        self.running: list[Request] = []  # running[i].slot == i
        self.cache = cache  # its slots 0..len(running)-1 hold the running requests
        self._max_batch_tokens = max_batch_tokens
        self._prefilled_last = False

    def schedule(self) -> Batch | None:
        """The next batch to run, or None when every request is done."""
        if not (self._prefilled_last and self.running):
            admitted = self._admit()
            if admitted:
                self._prefilled_last = True
                return Batch(tuple(admitted), prefill=True)
        self._prefilled_last = False
        return Batch(tuple(self.running), prefill=False) if self.running else None

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        budget = self._max_batch_tokens
        while self.waiting and len(self.running) < self.cache.max_slots:
            size = len(self.waiting[0].fed)
            if admitted and size > budget:
                break
            request = self.waiting.popleft()
            request.slot = len(self.running)
            self.running.append(request)
            admitted.append(request)
            budget -= size
        return admitted

    def retire(self) -> list[Request]:
        """Remove the finished requests from the running ones, keeping the rest in slots 0..n-1."""
        done = [r for r in self.running if r.finished]
        self._vacate(done)
        return done

    def drop(self, requests: Iterable[Request]) -> None:
        """Forget ``requests`` (a failed call's), waiting or running, freeing their slots."""
        gone = set(requests)
        self.waiting = deque(r for r in self.waiting if r not in gone)
        self._vacate([r for r in self.running if r in gone])

    def _vacate(self, leaving: list[Request]) -> None:
        for request in sorted(leaving, key=lambda r: r.slot, reverse=True):
            last = self.running.pop()
            if last is not request:  # the last running request moves into the freed slot
                self.cache.move(last.slot, request.slot, length=last.last_position)
                last.slot = request.slot
                self.running[request.slot] = last
