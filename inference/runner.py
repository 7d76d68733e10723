"""EngineRunner: the object a loaded model is. It owns the engine and turns requests into engine calls.

It renders each request's prompt (``PromptEncoder``), asks every question of every request in as few engine
calls as it can (scored questions grouped by their words and shared head, generations together), scores the
calibration priors once and caches them, halves its calls after an out-of-memory error, and returns one
response per request in order. Beam-free; a Beam proxy talks to it through its methods only.

Failures stay with the requests they belong to: a failed calibration prior fails only the requests that need
it (tried once per call, never cached), and a broken accelerator marks the runner broken, so every later call
raises ``DeviceFailure`` at once instead of touching the device again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from inference.failures import (
    DeviceFailure,
    device_failure,
    is_device_failure,
    is_out_of_memory,
    release_accelerator_memory,
)
from inference.prompts import EncodedPrompt, PromptEncoder
from inference.requests import Answer, PromptTemplate, RecordRequest, RecordResponse, RunnerInfo
from inference.settings import ModelSettings

_LOG = logging.getLogger(__name__)
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
_PriorKey = tuple[Any, ...]


class CalibrationFailed(RuntimeError):
    """A question's prior could not be scored: the requests that need it fail, their batch-mates do not."""


@dataclass(frozen=True)
class _Ask:
    """One question of one template of one request, as the engine will see it."""

    request: int
    template: PromptTemplate
    key: tuple[int, int]  # (template index, question index) within the request
    prompt: list[int]
    head: tuple[int, ...]

    @property
    def question(self) -> int:
        return self.key[1]


class EngineRunner:
    """What ``load_model`` returns: the engine plus request handling; one engine call at a time."""

    def __init__(
        self,
        engine: Any,
        settings: ModelSettings | None = None,
        *,
        load_seconds: float = 0.0,
        model_name: str | None = None,
    ) -> None:
        """``model_name``: the lineage name for rows (default: the engine's, i.e. the checkpoint folder's)."""
        settings = settings or ModelSettings()
        self._engine = engine
        self._model_name = model_name or str(engine.model_name)
        self.prompts = PromptEncoder(
            engine.tokenizer,
            engine.max_context,
            settings.prompt_style,
            settings.max_prompt_tokens,
            settings.on_overflow,
        )
        self._load_seconds = load_seconds
        self._lock = threading.Lock()
        self._priors: dict[tuple, tuple[float, ...]] = {}
        self._max_call: int | None = None  # requests per engine call; set (and halved) by out-of-memory errors
        self._broken: DeviceFailure | None = None  # the device failure that made this runner unusable
        self.oom_retries = 0

    def info(self) -> RunnerInfo:
        return RunnerInfo(self._model_name, self._engine.max_context, self.prompts.style, self._load_seconds)

    def run(self, requests: Sequence[RecordRequest]) -> list[RecordResponse]:
        """One response per request, in order; a bad request gets a response with ``error`` set."""
        with self._lock:
            if self._broken is not None:
                raise self._broken
            encoded: dict[int, list[EncodedPrompt]] = {}
            errors: dict[int, str] = {}
            for i, request in enumerate(requests):
                try:
                    encoded[i] = [self.prompts.encode(request.fields, t) for t in request.templates]
                except ValueError as err:
                    errors[i] = str(err)
            asks = [
                _Ask(i, template, (t, q), prompts[t].full(q), prompts[t].head)
                for i, prompts in encoded.items()
                for t, template in enumerate(requests[i].templates)
                for q in range(len(template.questions))
            ]
            answers: dict[tuple[int, int, int], Answer] = {}
            self._ask_scored([a for a in asks if a.template.questions[a.question].scored], answers, errors)
            self._ask_generated([a for a in asks if not a.template.questions[a.question].scored], answers, errors)
            return [self._response(i, request, encoded, answers, errors) for i, request in enumerate(requests)]

    def _ask_scored(
        self, asks: list[_Ask], answers: dict[tuple[int, int, int], Answer], errors: dict[int, str]
    ) -> None:
        """Scored questions, grouped by their candidates and the head their prompts share."""
        groups: dict[tuple[tuple[str, ...], tuple[int, ...]], list[_Ask]] = {}
        for ask in asks:
            groups.setdefault((self.prompts.candidates(ask.template, ask.question), ask.head), []).append(ask)
        priors: dict[_PriorKey, tuple[float, ...] | CalibrationFailed] = {}  # this call's, failures included
        for (candidates, head), members in groups.items():
            results = self._score([ask.prompt for ask in members], list(candidates), head)
            for ask, result in zip(members, results, strict=True):
                if result.error:
                    errors.setdefault(ask.request, result.error)
                    continue
                try:
                    prior = self._prior(ask.template, ask.question, priors)
                except CalibrationFailed as err:
                    errors.setdefault(ask.request, str(err))
                    continue
                answers[(ask.request, *ask.key)] = Answer(tuple(float(x) for x in result.logprobs), prior)

    def _ask_generated(
        self, asks: list[_Ask], answers: dict[tuple[int, int, int], Answer], errors: dict[int, str]
    ) -> None:
        if not asks:
            return
        params = [ask.template.questions[ask.question].params for ask in asks]
        completions = self._shrinking(
            list(zip([ask.prompt for ask in asks], params, strict=True)),
            lambda chunk: self._engine.generate([ids for ids, _ in chunk], [p for _, p in chunk]),
        )
        for ask, completion in zip(asks, completions, strict=True):
            if completion.error:
                errors.setdefault(ask.request, completion.error)
                continue
            answers[(ask.request, *ask.key)] = Answer(
                text=completion.text,
                finish_reason=completion.finish_reason,
                output_tokens=len(completion.token_ids),
            )

    def _response(
        self,
        index: int,
        request: RecordRequest,
        encoded: dict[int, list[EncodedPrompt]],
        answers: dict[tuple[int, int, int], Answer],
        errors: dict[int, str],
    ) -> RecordResponse:
        style, model = self.prompts.style, self._model_name
        prompts = encoded.get(index, [])
        tokens = sum(prompt.tokens for prompt in prompts)
        truncated = any(prompt.truncated for prompt in prompts)
        if index in errors:
            return RecordResponse((), tokens, truncated, style, model, errors[index])
        own = tuple(
            answers[(index, t, q)]
            for t, template in enumerate(request.templates)
            for q in range(len(template.questions))
        )
        return RecordResponse(own, tokens, truncated, style, model)

    def _score(self, prompts: list[list[int]], candidates: list[str], head: tuple[int, ...] | None) -> list[Any]:
        """Score with the template's head as the shared prefix: computed once, and each prompt's scores then
        depend on that prompt alone, never on its batch-mates. Scores are only compared among the words, so
        the engine computes the output layer for the words' tokens alone (restrict_vocab)."""
        return self._shrinking(
            prompts,
            lambda chunk: self._engine.score(chunk, candidates, restrict_vocab=True, shared_prefix=head),
        )

    def _shrinking(self, items: list[_Item], call: Callable[[list[_Item]], list[_Result]]) -> list[_Result]:
        """``call`` over ``items`` in chunks; an out-of-memory error halves the chunk size and retries.

        The smaller size sticks for later calls: the batch that ran out of memory is typical of the job.
        A single request that still runs out of memory raises (the handler dead-letters it alone).
        """
        out: list[_Result] = []
        start = 0
        while start < len(items):
            size = min(self._max_call or len(items), len(items) - start)
            try:
                results = call(items[start : start + size])
            except Exception as err:
                if is_device_failure(err):
                    self._broken = device_failure(err)
                    raise self._broken from err
                if not is_out_of_memory(err) or size == 1:
                    raise
                self._max_call = max(1, size // 2)
                self.oom_retries += 1
                release_accelerator_memory()
                _LOG.warning("engine ran out of memory on %d requests; retrying %d at a time", size, self._max_call)
                continue
            if len(results) != size:
                raise RuntimeError(f"internal error: the engine returned {len(results)} results for {size} requests")
            out.extend(results)
            start += size
        return out

    def _prior(
        self,
        template: PromptTemplate,
        question: int,
        priors: dict[_PriorKey, tuple[float, ...] | CalibrationFailed],
    ) -> tuple[float, ...] | None:
        """Mean word scores of a question over its content-free calibration texts, scored once per key.

        A failure is remembered for this call only (``priors``): the requests of this batch that need the
        prior fail with it (CalibrationFailed), and the next batch tries again."""
        if not template.questions[question].calibration:
            return None
        key = (template, question, self.prompts.style)
        if key in self._priors:
            return self._priors[key]
        if key not in priors:
            try:
                priors[key] = self._score_prior(template, question)
            except CalibrationFailed as err:
                priors[key] = err
        found = priors[key]
        if isinstance(found, CalibrationFailed):
            raise found
        self._priors[key] = found
        return found

    def _score_prior(self, template: PromptTemplate, question: int) -> tuple[float, ...]:
        """Score the calibration texts; CalibrationFailed says why not (a broken device still raises)."""
        hint = "rerun, or pass --no_calibration (calibrate: false in a task file) to use raw label scores"
        what = "scoring the label prior (content-free calibration prompt) failed"
        candidates = self.prompts.candidates(template, question)
        prompts = []
        for document in template.questions[question].calibration:
            fields = dict.fromkeys(_slot_names(template, self.prompts.style), document)
            prompts.append(self.prompts.encode(fields, template, reserve=False).full(question))
        try:
            rows = self._score(prompts, list(candidates), self.prompts.head(template))
        except DeviceFailure:
            raise
        except Exception as err:
            raise CalibrationFailed(f"{what}: {type(err).__name__}: {err}; {hint}") from err
        refused = [row.error for row in rows if row.error]
        if refused:
            raise CalibrationFailed(f"{what}: {refused[0]}; {hint}")
        return tuple(sum(row.logprobs[j] for row in rows) / len(rows) for j in range(len(candidates)))


def _slot_names(template: PromptTemplate, style: str) -> set[str]:
    rendering = template.rendering(style)
    return {p.name for pieces in (rendering.trunk, *rendering.tails) for p in pieces if not isinstance(p, str)}
