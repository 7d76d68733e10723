"""Scored questions answered by a classification head instead of label scoring.

A head reads each record's prompt once (``engine.features``: one prefill, no label branches, no output layer)
and gives one log-probability per label. It answers the scored questions whose words are exactly its labels
(in any order); any other scored question is a mistake in the job (a head trained for another task), so its
records get an error that names both label sets. Heads answer questions asked alone in their template: a
template that asks several questions branches them off one trunk, where the head has no place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gemma_ops.adapters.head import ClassificationHead
from inference.requests import Answer


def head_mismatch(head: ClassificationHead, words: Sequence[str]) -> str | None:
    """Why ``head`` cannot answer a question that scores ``words``, or None when it can."""
    if sorted(words) == sorted(head.labels):
        return None
    return (
        f"the classification head answers {', '.join(head.labels)}, but the task scores {', '.join(words)}; "
        "use the task the head was trained with (make tune), or run without --adapter"
    )


def head_answers(
    head: ClassificationHead,
    words: Sequence[str],
    prompts: list[list[int]],
    shared_prefix: tuple[int, ...],
    features: Callable[[list[list[int]], str, tuple[int, ...]], list[Any]],
) -> list[Answer | str]:
    """One Answer per prompt (log-probabilities in ``words``' order, no prior: the head is trained to be
    calibrated), or the engine's reason it could not read the prompt. ``features(prompts, pooling, prefix)``
    is the engine's features call."""
    order = [head.labels.index(word) for word in words]
    results = features(prompts, head.pooling, shared_prefix)
    readable = [r.vector for r in results if r.error is None]
    out: list[Answer | str] = []
    if readable:
        import torch

        log_probs = iter(head.log_probs(torch.stack(readable)).tolist())  # [N, C]
    for result in results:
        if result.error is not None:
            out.append(result.error)
            continue
        row = next(log_probs)
        out.append(Answer(tuple(row[i] for i in order), None))
    return out
