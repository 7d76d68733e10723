"""Where a timed engine call spent its wall time: prefill, decode, the output layer, and the rest (not a test).

The model's entry points are wrapped with timers from outside for the length of one call (the library carries no
timing code): ``forward_packed`` (prompt prefill and scoring passes), ``forward_step`` (decode steps) and
``logits`` (the output layer, timed on its own: prefill and decode figures exclude it). Given the engine's
``decoder`` (gemma_ops.decode_graphs), decode is timed at its ``step`` instead: a CUDA graph replay never calls
``forward_step``. The rest is sampling, finish checks, scheduling, tokenization and Python. On CUDA each timer
synchronizes, which costs a little overlap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PIECES = {"forward_packed": "prefill", "forward_step": "decode", "logits": "output layer"}
DECODER_PIECES = {"forward_packed": "prefill", "step": "decode", "logits": "output layer"}  # decode at the decoder


@contextmanager
def cost_split(model: Any, sync: Callable[[], None] = lambda: None, decoder: Any = None) -> Iterator[dict[str, float]]:
    """Seconds per piece, filled in while the block runs; ``other`` is added when it ends."""
    pieces = PIECES if decoder is None else DECODER_PIECES
    seconds = {label: 0.0 for label in pieces.values()}
    start = time.perf_counter()
    targets = {name: decoder if name == "step" else model for name in pieces}

    def timed(name: str) -> Callable[..., Any]:
        original = getattr(targets[name], name)

        def run(*args: Any, **kwargs: Any) -> Any:
            sync()
            begin = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync()
                seconds[pieces[name]] += time.perf_counter() - begin

        return run

    for name, target in targets.items():
        target.__dict__[name] = timed(name)  # an instance attribute shadows the method for this block only
    try:
        yield seconds
    finally:
        for name, target in targets.items():
            del target.__dict__[name]
        seconds["other"] = max(time.perf_counter() - start - sum(seconds.values()), 0.0)


def describe(seconds: dict[str, float]) -> str:
    total = sum(seconds.values())
    return "  ".join(f"{label} {s:.2f} s ({s / total:.0%})" for label, s in seconds.items())
