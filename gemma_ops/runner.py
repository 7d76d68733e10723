"""EngineRunner: the object a loaded model is. It owns the engine and turns requests into engine calls.

It resolves the prompt style (turn format for instruction-tuned checkpoints), tokenizes, cuts an overlong
document (never the instructions) to fit the context, scores label priors once and caches them, and returns
one response per request in order. Beam-free; a Beam proxy talks to it through its methods only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gemma_ops.batch_requests import (
    GenerateRequest,
    GenerateResponse,
    Overflow,
    PromptStyle,
    PromptTemplate,
    PromptTooLong,
    Request,
    Response,
    RunnerInfo,
    ScoreRequest,
    ScoreResponse,
    error_response,
)

_CHAT_SLOT = "\x00GEMMA-BEAM-DOCUMENT\x00"
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
    import sys

    torch = sys.modules.get("torch")  # never import torch just for this: fake engines run without it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class EngineRunner:
    """What ``load_model`` returns: the engine plus request handling; one engine call at a time."""

    def __init__(
        self,
        engine: Any,
        *,
        prompt_style: PromptStyle = "auto",
        max_prompt_tokens: int | None = None,
        overflow: Overflow = "truncate",
        load_seconds: float = 0.0,
        model_name: str | None = None,
    ) -> None:
        """``model_name``: the lineage name for rows (default: the engine's, i.e. the checkpoint folder's)."""
        if prompt_style not in ("auto", "completion", "chat"):
            raise ValueError(f"prompt_style must be auto, completion or chat, got {prompt_style!r}")
        if overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
        self._engine = engine
        self._model_name = model_name or str(engine.model_name)
        self._tokenizer = engine.tokenizer
        if prompt_style == "auto":
            prompt_style = "chat" if self._tokenizer.has_chat_template else "completion"
        self._style = prompt_style
        self._max_prompt_tokens = max_prompt_tokens
        self._overflow = overflow
        self._load_seconds = load_seconds
        self._lock = threading.Lock()
        self._priors: dict[tuple, tuple[float, ...]] = {}
        # Tokenized once per template / label set, not once per record:
        self._template_ids: dict[PromptTemplate, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._candidate_ids: dict[tuple[str, ...], tuple[tuple[int, ...], ...]] = {}
        self._max_call: int | None = None  # requests per engine call; set (and halved) by out-of-memory errors
        self.oom_retries = 0

    def info(self) -> RunnerInfo:
        return RunnerInfo(self._model_name, self._engine.max_context, self._style, self._load_seconds)

    def run(self, requests: Sequence[Request]) -> list[Response]:
        """One response per request, in order; a bad request gets a response with ``error`` set."""
        with self._lock:
            responses: list[Response | None] = [None] * len(requests)
            score_groups: dict[tuple[str, ...], list[int]] = {}
            generate_ids: list[int] = []
            encoded: dict[int, tuple[list[int], bool]] = {}
            for i, request in enumerate(requests):
                try:
                    candidates = self.candidates(request) if isinstance(request, ScoreRequest) else ()
                    encoded[i] = self._encode(request.document, request.template, self._reserve(request))
                except ValueError as err:
                    responses[i] = self._error(request, str(err))
                    continue
                if isinstance(request, ScoreRequest):
                    score_groups.setdefault(candidates, []).append(i)
                else:
                    generate_ids.append(i)
            for candidates, indices in score_groups.items():
                heads = {self._head(requests[i].template) for i in indices}
                head = heads.pop() if len(heads) == 1 else None
                results = self._score([encoded[i][0] for i in indices], list(candidates), head)
                for i, result in zip(indices, results, strict=True):
                    responses[i] = self._score_response(requests[i], result, encoded[i][1])
            if generate_ids:
                completions = self._shrinking(
                    [(encoded[i][0], requests[i].params) for i in generate_ids],
                    lambda chunk: self._engine.generate([ids for ids, _ in chunk], [p for _, p in chunk]),
                )
                for i, completion in zip(generate_ids, completions, strict=True):
                    responses[i] = GenerateResponse(
                        text=completion.text,
                        finish_reason=completion.finish_reason,
                        prompt_tokens=completion.prompt_tokens,
                        output_tokens=len(completion.token_ids),
                        truncated=encoded[i][1],
                        style=self._style,
                        model=self._model_name,
                        error=completion.error,
                    )
            missing = [i for i, r in enumerate(responses) if r is None]
            if missing:
                raise RuntimeError(f"internal error: no response for requests {missing}")
            return responses  # type: ignore[return-value]

    # -- helpers

    def _score(self, prompts: list[list[int]], candidates: list[str], head: tuple[int, ...] | None) -> list[Any]:
        """Score with the template's head as the shared prefix: computed once, and each prompt's scores then
        depend on that prompt alone, never on its batch-mates."""
        return self._shrinking(
            prompts,
            lambda chunk: self._engine.score(chunk, candidates, restrict_vocab=True, shared_prefix=head),
        )

    def _head(self, template: PromptTemplate) -> tuple[int, ...]:
        """Token ids of the template before the document (BOS included): every prompt of it starts so."""
        return self._template_token_ids(template)[0]

    def _template_token_ids(self, template: PromptTemplate) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(head, tail): the template's token ids before (BOS included) and after the document."""
        if template not in self._template_ids:
            before, after = self._parts(template)
            head = tuple(self._tokenizer.encode(before))
            self._template_ids[template] = (head, tuple(self._tokenizer.encode(after, add_bos=False)))
        return self._template_ids[template]

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

    # Scores are only compared among the labels, so the engine computes the output layer for the labels'
    # tokens alone (restrict_vocab): the same choice, a fraction of the cost of the full vocabulary.

    def prompt_ids(self, request: Request) -> list[int]:
        """The token ids ``run`` would send the engine for this request (benchmarks use the same prompts)."""
        return self._encode(request.document, request.template, self._reserve(request))[0]

    def request_tokens(self, request: Request) -> int:
        """Tokens a request costs the engine: its prompt, plus the candidates it scores or the most it may
        generate (what ``pipelines.plan`` sizes a job by)."""
        prompt = len(self.prompt_ids(request))
        if isinstance(request, GenerateRequest):
            return prompt + request.params.max_new_tokens
        return prompt + sum(len(ids) for ids in self._candidate_token_ids(request))

    def shared_prefix(self, request: Request) -> tuple[int, ...]:
        """The token ids ``run`` shares between the prompts of this request's template."""
        return self._head(request.template)

    def _reserve(self, request: Request) -> int:
        """Context tokens a request needs after its prompt: its output budget, or its longest label."""
        if isinstance(request, GenerateRequest):
            return request.params.max_new_tokens
        return max(len(ids) for ids in self._candidate_token_ids(request))

    def _candidate_token_ids(self, request: ScoreRequest) -> tuple[tuple[int, ...], ...]:
        candidates = self.candidates(request)
        if candidates not in self._candidate_ids:
            encoded = self._tokenizer.encode_batch(list(candidates), add_bos=False)
            self._candidate_ids[candidates] = tuple(tuple(ids) for ids in encoded)
        return self._candidate_ids[candidates]

    def candidates(self, request: ScoreRequest) -> tuple[str, ...]:
        """The strings scored for a request's labels in the resolved prompt style."""
        prefix = request.template.spec(self._style).candidate_prefix
        return tuple(prefix + word for word in (request.words or request.labels))

    def _parts(self, template: PromptTemplate) -> tuple[str, str]:
        spec = template.spec(self._style)
        if self._style != "chat":
            return spec.prefix, spec.suffix
        wrapped = self._tokenizer.chat_prompt(spec.prefix + _CHAT_SLOT + spec.suffix)
        before, slot, after = wrapped.partition(_CHAT_SLOT)
        if not slot:
            raise ValueError("the tokenizer's chat_prompt dropped the document; cannot build a chat prompt")
        return before, after

    def _encode(self, document: str, template: PromptTemplate, reserve: int) -> tuple[list[int], bool]:
        """Token ids of the full prompt, cutting the document (never the instructions) when it is too long.

        The template is ours and may hold control tokens (the chat turn markers); the document is untrusted,
        so it is encoded on its own with ``allow_special=False``: a literal "<start_of_turn>" in a record
        becomes plain characters and can never open a turn or end the prompt's delimiters early.
        """
        limit = self._engine.max_context - reserve
        if self._max_prompt_tokens is not None:
            limit = min(limit, self._max_prompt_tokens)
        head_ids, tail_ids = self._template_token_ids(template)
        head, tail = list(head_ids), list(tail_ids)
        body = self._tokenizer.encode(document, add_bos=False, allow_special=False)
        total = len(head) + len(body) + len(tail)
        if total <= limit:
            return head + body + tail, False
        if self._overflow == "error":
            raise PromptTooLong(
                f"prompt has {total} tokens, over the limit of {limit} "
                f"(context {self._engine.max_context} "
                f"minus {reserve} reserved for the output, or --max_prompt_tokens); "
                "shorten the record, raise --max_prompt_tokens or pass --on_overflow truncate"
            )
        room = limit - len(head) - len(tail)
        if room <= 0:
            raise PromptTooLong(
                f"the prompt template alone needs {len(head) + len(tail)} tokens but only {limit} fit; "
                "lower --max_new_tokens or raise --max_prompt_tokens"
            )
        return head + body[:room] + tail, True

    def _prior(self, request: ScoreRequest) -> tuple[float, ...] | None:
        if not request.calibration_documents:
            return None
        key = (request.template, self.candidates(request), request.calibration_documents, self._style)
        if key not in self._priors:
            candidates = list(self.candidates(request))
            prompts = [self._encode(d, request.template, 0)[0] for d in request.calibration_documents]
            rows = self._score(prompts, candidates, self._head(request.template))
            for row in rows:
                if row.error:
                    raise RuntimeError(f"scoring the content-free calibration prompt failed: {row.error}")
            self._priors[key] = tuple(sum(row.logprobs[j] for row in rows) / len(rows) for j in range(len(candidates)))
        return self._priors[key]

    def _score_response(self, request: ScoreRequest, result: Any, truncated: bool) -> ScoreResponse:
        if result.error:
            return ScoreResponse((), None, result.prompt_tokens, truncated, self._style, self._model_name, result.error)
        return ScoreResponse(
            logprobs=tuple(float(x) for x in result.logprobs),
            prior=self._prior(request),
            prompt_tokens=result.prompt_tokens,
            truncated=truncated,
            style=self._style,
            model=self._model_name,
        )

    def _error(self, request: Request, message: str) -> Response:
        return error_response(request, message, self._style, self._model_name)
