"""EngineRunner: the object a loaded model is. It owns the engine and turns requests into engine calls.

It renders each request's prompt (``PromptEncoder``), groups score requests by label set, scores label priors
once and caches them, halves its calls after an out-of-memory error, and returns one response per request in
order. Beam-free; a Beam proxy talks to it through its methods only.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from inference.prompts import PromptEncoder
from inference.requests import (
    GenerateResponse,
    Request,
    Response,
    RunnerInfo,
    ScoreRequest,
    ScoreResponse,
    error_response,
)
from inference.settings import ModelSettings

_LOG = logging.getLogger(__name__)
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def is_out_of_memory(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (and the older RuntimeError "CUDA out of memory"), checked without torch."""
    return type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def _release_accelerator_memory() -> None:
    """Give the allocator's cached blocks back after an OOM, so the smaller retry has room."""
    torch = sys.modules.get("torch")  # never import torch just for this: fake engines run without it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


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
        self.oom_retries = 0

    def info(self) -> RunnerInfo:
        return RunnerInfo(self._model_name, self._engine.max_context, self.prompts.style, self._load_seconds)

    def run(self, requests: Sequence[Request]) -> list[Response]:
        """One response per request, in order; a bad request gets a response with ``error`` set."""
        with self._lock:
            responses: list[Response | None] = [None] * len(requests)
            score_groups: dict[tuple[str, ...], list[int]] = {}
            generate_ids: list[int] = []
            encoded: dict[int, tuple[list[int], bool]] = {}
            for i, request in enumerate(requests):
                try:
                    candidates = self.prompts.candidates(request) if isinstance(request, ScoreRequest) else ()
                    encoded[i] = self.prompts.prompt_ids(request)
                except ValueError as err:
                    responses[i] = self._error(request, str(err))
                    continue
                if isinstance(request, ScoreRequest):
                    score_groups.setdefault(candidates, []).append(i)
                else:
                    generate_ids.append(i)
            for candidates, indices in score_groups.items():
                self._run_scores(requests, indices, candidates, encoded, responses)
            if generate_ids:
                self._run_generations(requests, generate_ids, encoded, responses)
            missing = [i for i, r in enumerate(responses) if r is None]
            if missing:
                raise RuntimeError(f"internal error: no response for requests {missing}")
            return responses  # type: ignore[return-value]

    def _run_scores(
        self,
        requests: Sequence[Request],
        indices: list[int],
        candidates: tuple[str, ...],
        encoded: dict[int, tuple[list[int], bool]],
        responses: list[Response | None],
    ) -> None:
        heads = {self.prompts.head(requests[i].template) for i in indices}
        head = heads.pop() if len(heads) == 1 else None
        results = self._score([encoded[i][0] for i in indices], list(candidates), head)
        for i, result in zip(indices, results, strict=True):
            responses[i] = self._score_response(requests[i], result, encoded[i][1])

    def _run_generations(
        self,
        requests: Sequence[Request],
        indices: list[int],
        encoded: dict[int, tuple[list[int], bool]],
        responses: list[Response | None],
    ) -> None:
        completions = self._shrinking(
            [(encoded[i][0], requests[i].params) for i in indices],
            lambda chunk: self._engine.generate([ids for ids, _ in chunk], [p for _, p in chunk]),
        )
        for i, completion in zip(indices, completions, strict=True):
            responses[i] = GenerateResponse(
                text=completion.text,
                finish_reason=completion.finish_reason,
                prompt_tokens=completion.prompt_tokens,
                output_tokens=len(completion.token_ids),
                truncated=encoded[i][1],
                style=self.prompts.style,
                model=self._model_name,
                error=completion.error,
            )

    def _score(self, prompts: list[list[int]], candidates: list[str], head: tuple[int, ...] | None) -> list[Any]:
        """Score with the template's head as the shared prefix: computed once, and each prompt's scores then
        depend on that prompt alone, never on its batch-mates. Scores are only compared among the labels, so
        the engine computes the output layer for the labels' tokens alone (restrict_vocab)."""
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
                if not is_out_of_memory(err) or size == 1:
                    raise
                self._max_call = max(1, size // 2)
                self.oom_retries += 1
                _release_accelerator_memory()
                _LOG.warning("engine ran out of memory on %d requests; retrying %d at a time", size, self._max_call)
                continue
            if len(results) != size:
                raise RuntimeError(f"internal error: the engine returned {len(results)} results for {size} requests")
            out.extend(results)
            start += size
        return out

    def _prior(self, request: ScoreRequest) -> tuple[float, ...] | None:
        """Mean label scores over the request's content-free calibration documents, scored once per key."""
        if not request.calibration_documents:
            return None
        candidates = self.prompts.candidates(request)
        key = (request.template, candidates, request.calibration_documents, self.prompts.style)
        if key not in self._priors:
            prompts = [self.prompts.encode(d, request.template, 0)[0] for d in request.calibration_documents]
            rows = self._score(prompts, list(candidates), self.prompts.head(request.template))
            for row in rows:
                if row.error:
                    raise RuntimeError(f"scoring the content-free calibration prompt failed: {row.error}")
            self._priors[key] = tuple(sum(row.logprobs[j] for row in rows) / len(rows) for j in range(len(candidates)))
        return self._priors[key]

    def _score_response(self, request: ScoreRequest, result: Any, truncated: bool) -> ScoreResponse:
        style, model = self.prompts.style, self._model_name
        if result.error:
            return ScoreResponse((), None, result.prompt_tokens, truncated, style, model, result.error)
        return ScoreResponse(
            logprobs=tuple(float(x) for x in result.logprobs),
            prior=self._prior(request),
            prompt_tokens=result.prompt_tokens,
            truncated=truncated,
            style=style,
            model=model,
        )

    def _error(self, request: Request, message: str) -> Response:
        return error_response(request, message, self.prompts.style, self._model_name)
