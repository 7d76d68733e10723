"""One engine loop per model copy, shared by every thread that calls the engine: continuous batching across calls.

Without it each generate call runs its own scheduler to empty: as a call's last requests finish, its slots sit
idle until the caller comes back with the next batch (in Beam, the next RunInference batch). With the loop, one
thread owns the model; a caller's generation requests join the one running scheduler and take slots as soon as
they free, whichever call they came from, and the caller waits only for its own requests. Other model work
(scoring, trunk passes, features) runs on the loop thread between two steps, so the model is never used by two
threads at once.

A failed step fails the calls whose requests were in that step (their callers get the exception, as they would
from a plain engine call); the other calls' requests stay queued and running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from gemma_ops.attention import PrefixKV
from gemma_ops.kv_cache import KVCache
from gemma_ops.outputs import Completion
from gemma_ops.sampling import SamplingParams
from gemma_ops.scheduler import Batch, Request, Scheduler

_T = TypeVar("_T")


@dataclass(frozen=True)
class RequestSpec:
    """A generation request before admission: what the engine needs to build its ``Request``."""

    index: int  # position among its call's requests
    prompt: list[int]
    params: SamplingParams
    prefix: PrefixKV | None = None


@dataclass(frozen=True)
class LoopParts:
    """What the loop needs from its engine."""

    build: Callable[[RequestSpec], Request]  # a spec -> its Request (grammar state and generator included)
    run: Callable[[Batch, KVCache], None]  # runs a batch: one new token (or a finish) for each of its requests
    cache: Callable[[], KVCache]  # the KV cache the loop's scheduler runs over
    decode: Callable[[list[int]], str]
    max_batch_tokens: int


@dataclass(eq=False)
class _Call(Generic[_T]):
    """One caller's work and where its outcome goes; ``done`` is set once outcome or error is in."""

    done: threading.Event = field(default_factory=threading.Event)
    outcome: _T | None = None
    error: BaseException | None = None

    def wait(self) -> _T:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.outcome  # type: ignore[return-value]


@dataclass(eq=False)
class _Generation(_Call[list[Completion]]):
    specs: Sequence[RequestSpec] = ()
    results: list[Completion | None] = field(default_factory=list)
    remaining: int = 0


@dataclass(eq=False)
class _Job(_Call[object]):
    run: Callable[[], object] = lambda: None

    def settle(self) -> None:
        try:
            self.outcome = self.run()
        except Exception as err:  # the caller gets it
            self.error = err
        self.done.set()


class EngineLoop:
    """The loop thread and its one scheduler; ``generate`` and ``call`` may be used from any thread."""

    def __init__(self, parts: LoopParts, name: str = "gemma-engine-loop", idle_seconds: float = 1.0) -> None:
        """``idle_seconds``: the thread ends after this long without work (and starts again with the next call),
        so an engine nobody calls is not kept alive by its own thread."""
        self._parts = parts
        self._name = name
        self._idle_seconds = idle_seconds
        self._wake = threading.Condition()
        self._arrivals: list[_Generation] = []
        self._jobs: list[_Job] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._scheduler: Scheduler | None = None
        self._owner: dict[Request, tuple[_Generation, int]] = {}  # admitted requests -> (their call, position)

    def generate(self, specs: Sequence[RequestSpec]) -> list[Completion]:
        """The completions of ``specs`` in order, generated alongside every other caller's requests."""
        if not specs:
            return []
        call = _Generation(specs=specs, results=[None] * len(specs), remaining=len(specs))
        self._submit(lambda: self._arrivals.append(call))
        return call.wait()

    def call(self, run: Callable[[], _T]) -> _T:
        """``run()`` on the loop thread between two steps; its result, or its exception raised here."""
        if threading.current_thread() is self._thread:  # already on the loop (a job's own engine call)
            return run()
        job = _Job(run=run)
        self._submit(lambda: self._jobs.append(job))
        return job.wait()  # type: ignore[return-value]

    def close(self) -> None:
        """Finish the work already submitted, then stop the thread; later calls raise."""
        with self._wake:
            self._closing = True
            thread = self._thread
            self._wake.notify()
        if thread is not None:
            thread.join()

    def _submit(self, add: Callable[[], None]) -> None:
        with self._wake:
            if self._closing:
                raise RuntimeError("the engine loop is closed; this engine takes no more calls")
            add()
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()

    # --------------------------------------------------------------------------------------- loop thread
    def _main(self) -> None:
        try:
            with torch.inference_mode():
                while self._next():
                    pass
        except BaseException as err:  # a fault of the loop's own: fail what is in flight, start afresh
            with self._wake:
                left = [*self._jobs, *self._arrivals, *{call for call, _ in self._owner.values()}]
                self._jobs, self._arrivals, self._owner, self._scheduler = [], [], {}, None
                self._thread = None
            for call in left:
                call.error = RuntimeError(f"the engine loop failed: {type(err).__name__}: {err}")
                call.done.set()
            raise

    def _next(self) -> bool:
        """Jobs first, then new arrivals, then one step; False when the thread should end (closed or idle)."""
        with self._wake:
            while not (self._jobs or self._arrivals or self._owner):
                if self._closing or not self._wake.wait(self._idle_seconds):
                    self._thread = None  # under the lock: the next _submit starts a new thread
                    return False
            jobs, self._jobs = self._jobs, []
            arrivals, self._arrivals = self._arrivals, []
        for job in jobs:
            job.settle()
        for call in arrivals:
            self._admit(call)
        if self._owner:
            self._step()
        return True

    def _admit(self, call: _Generation) -> None:
        """Build the call's requests and queue them behind the ones already waiting."""
        try:
            requests = [self._parts.build(spec) for spec in call.specs]
            if self._scheduler is None:
                self._scheduler = Scheduler([], self._parts.cache(), self._parts.max_batch_tokens)
        except Exception as err:  # the caller gets it
            call.error = err
            call.done.set()
            return
        for position, request in enumerate(requests):
            self._owner[request] = (call, position)
        self._scheduler.waiting.extend(requests)

    def _step(self) -> None:
        """One batch of the shared scheduler; completions go to their calls, a failure to the calls it hit."""
        scheduler = self._scheduler
        assert scheduler is not None
        batch = scheduler.schedule()
        if batch is None:  # every request left already (dropped by a failure)
            return
        try:
            self._parts.run(batch, scheduler.cache)
            retired = scheduler.retire()
            completions = [(r, r.completion(self._parts.decode)) for r in retired]
        except Exception as err:  # raised in the callers whose requests were in the batch
            self._fail({self._owner[r][0] for r in batch.requests}, err)
            return
        for request, completion in completions:
            call, position = self._owner.pop(request)
            call.results[position] = completion
            call.remaining -= 1
            if call.remaining == 0:
                call.outcome = [r for r in call.results if r is not None]
                call.done.set()

    def _fail(self, calls: set[_Generation], err: BaseException) -> None:
        """Drop every request of ``calls`` from the scheduler (freeing their slots) and raise ``err`` in them."""
        scheduler = self._scheduler
        assert scheduler is not None
        doomed = [r for r, (call, _) in self._owner.items() if call in calls]
        scheduler.drop(doomed)
        for request in doomed:
            del self._owner[request]
        for call in calls:
            call.error = err
            call.done.set()
