"""Calibration priors: each scored question's mean word scores over content-free texts (e.g. "N/A").

A prior is scored once per (template, question, prompt style) and kept for the runner's life. A prior that
cannot be scored fails only the requests that need it (``CalibrationFailed``, their error), never their
batch-mates; the failure is remembered for one runner call (``Attempts``) so a batch tries once, and the next
batch tries again. A broken device is not a calibration failure: it is raised for the worker to fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inference.failures import DeviceFailure
from inference.prompts import PromptEncoder
from inference.requests import PromptTemplate

Score = Callable[[list[list[int]], list[str], tuple[int, ...] | None], list[Any]]
Key = tuple[Any, ...]
Attempts = dict[Key, "tuple[float, ...] | CalibrationFailed"]  # one runner call's outcomes, failures included

HINT = "rerun, or pass --no_calibration (calibrate: false in a task file) to use raw label scores"
WHAT = "scoring the label prior (content-free calibration prompt) failed"


class CalibrationFailed(RuntimeError):
    """A question's prior could not be scored: the requests that need it fail, their batch-mates do not."""


class Priors:
    """The priors of one runner: ``score`` is its (out-of-memory-safe) engine scoring call."""

    def __init__(self, prompts: PromptEncoder, score: Score) -> None:
        self._prompts = prompts
        self._score = score
        self._known: dict[Key, tuple[float, ...]] = {}

    def get(self, template: PromptTemplate, question: int, attempts: Attempts) -> tuple[float, ...] | None:
        """The question's prior (None without calibration); CalibrationFailed when it cannot be scored."""
        if not template.questions[question].calibration:
            return None
        key = (template, question, self._prompts.style)
        if key in self._known:
            return self._known[key]
        if key not in attempts:
            try:
                attempts[key] = self._score_prior(template, question)
            except CalibrationFailed as err:
                attempts[key] = err
        found = attempts[key]
        if isinstance(found, CalibrationFailed):
            raise found
        self._known[key] = found
        return found

    def _score_prior(self, template: PromptTemplate, question: int) -> tuple[float, ...]:
        candidates = self._prompts.candidates(template, question)
        prompts = []
        for text in template.questions[question].calibration:
            fields = dict.fromkeys(_slot_names(template, self._prompts.style), text)
            prompts.append(self._prompts.encode(fields, template, reserve=False).full(question))
        try:
            rows = self._score(prompts, list(candidates), self._prompts.head(template))
        except DeviceFailure:
            raise
        except Exception as err:  # anything else the engine raised is this prior's failure, said in the error
            raise CalibrationFailed(f"{WHAT}: {type(err).__name__}: {err}; {HINT}") from err
        refused = [row.error for row in rows if row.error]
        if refused:
            raise CalibrationFailed(f"{WHAT}: {refused[0]}; {HINT}")
        return tuple(sum(row.logprobs[j] for row in rows) / len(rows) for j in range(len(candidates)))


def _slot_names(template: PromptTemplate, style: str) -> set[str]:
    rendering = template.rendering(style)
    return {p.name for pieces in (rendering.trunk, *rendering.tails) for p in pieces if not isinstance(p, str)}
