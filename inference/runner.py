"""EngineRunner: the object a loaded model is. It owns the engine and turns requests into engine calls.

It renders each request's prompt (``PromptEncoder``), asks every question of every request in as few engine
calls as it can (scored questions grouped by their words and shared head, generations together), scores the
calibration priors once and caches them, reads texts too long for the context in chunks for generated
questions (--long_documents chunk), halves its calls after an out-of-memory error, and returns one response
per request in order. Beam-free; a Beam proxy talks to it through its methods only.

A question that ``explain``s is also scored on each of its request's ``variants`` of the text (the text with
one span left out, ``transforms.evidence``): every variant of every record of the call goes into one scoring
call with the template's head as the shared prefix (with the records' own prompts too when their template asks
one question), and their scores come back in ``Answer.variants``. Each response carries the call's wall time
shared out by tokens (``inference_ms``) and when the call ended.

Failures stay with the requests they belong to: a failed calibration prior fails only the requests that need
it (tried once per call, never cached), and a broken accelerator marks the runner broken, so every later call
raises ``DeviceFailure`` at once instead of touching the device again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemma_ops.branching import Branch, Tree
from inference.calibration import Attempts, CalibrationFailed, Priors
from inference.calls import ShrinkingCalls
from inference.heads import head_answers, head_mismatch
from inference.long_documents import LongQuestion, LongReading, read_long_texts
from inference.prompts import EncodedPrompt, PromptEncoder
from inference.requests import TEXT_FIELD, Answer, PromptTemplate, RecordRequest, RecordResponse, RunnerInfo
from inference.responses import generated_answer, record_response, timed
from inference.settings import ModelSettings


@dataclass(frozen=True)
class _Ask:
    """One question of one template of one request, as the engine will see it."""

    request: int
    template: PromptTemplate
    key: tuple[int, int]  # (template index, question index) within the request
    prompt: list[int]
    head: tuple[int, ...]
    variant: int | None = None  # explain: the index of the request's variant of the text this prompt reads

    @property
    def question(self) -> int:
        return self.key[1]


class EngineRunner:
    """What ``load_model`` returns: the engine plus request handling. Calls from several threads overlap when
    the engine is serving (``concurrent_calls``), else they run one at a time."""

    def __init__(
        self,
        engine: Any,
        settings: ModelSettings | None = None,
        *,
        load_seconds: float = 0.0,
        model_name: str | None = None,
        head: Any = None,
        adapter: str | None = None,
    ) -> None:
        """``model_name``: the lineage name for rows (default: the engine's, i.e. the checkpoint folder's).
        ``head``: a ClassificationHead that answers the scored questions (``inference.heads``); ``adapter``: the
        lineage name of the adapter the job runs with (a merged LoRA or the head), e.g. ``DIR@sha256:...``."""
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
        self._head = head
        self._adapter = adapter
        self._read_long_documents = settings.long_documents == "chunk"
        # a serving engine takes calls from several threads at once (their generations share one batch)
        self._lock = contextlib.nullcontext() if getattr(engine, "concurrent_calls", False) else threading.Lock()
        self._priors = Priors(self.prompts, self._score)
        self._calls = ShrinkingCalls()

    @property
    def oom_retries(self) -> int:
        return self._calls.oom_retries

    def info(self) -> RunnerInfo:
        return RunnerInfo(self._model_name, self._engine.max_context, self.prompts.style, self._load_seconds)

    def run(self, requests: Sequence[RecordRequest]) -> list[RecordResponse]:
        """One response per request, in order; a bad request gets a response with ``error`` set."""
        with self._lock:
            self._calls.check_device()
            started = time.perf_counter()
            encoded: dict[int, list[EncodedPrompt]] = {}
            errors: dict[int, str] = {}
            for i, request in enumerate(requests):
                try:
                    encoded[i] = [self.prompts.encode(request.fields, t) for t in request.templates]
                except ValueError as err:
                    errors[i] = str(err)
            asks, long_asks = self._asks(requests, encoded)
            variants = self._variant_asks(requests, encoded, errors)
            answers: dict[tuple[int, int, int], Answer] = {}
            readings: dict[tuple[int, int, int], LongReading] = {}
            alone = [a for a in asks if len(a.template.questions) == 1]  # asked as one prompt each, as always
            scored = [a for a in alone if a.template.questions[a.question].scored]
            if self._head is not None:
                self._ask_head(scored, answers, errors)
                for ask in asks + variants:
                    if len(ask.template.questions) > 1 or ask.variant is not None:
                        errors.setdefault(ask.request, "a classification head answers classify tasks asked alone "
                                          "in their template, without explain")  # fmt: skip
                asks = [a for a in asks if len(a.template.questions) == 1]
                variant_scores: dict = {}
            else:
                variant_scores = self._ask_scored(scored + variants, answers, errors)
            self._ask_generated([a for a in alone if not a.template.questions[a.question].scored], answers, errors)
            self._ask_shared([a for a in asks if len(a.template.questions) > 1], encoded, answers, errors)
            self._ask_long(long_asks, requests, answers, errors, readings)
            for key, rows in variant_scores.items():
                if key in answers:
                    answers[key] = dataclasses.replace(answers[key], variants=tuple(rows[v] for v in sorted(rows)))
            variant_tokens = [0] * len(requests)
            for ask in variants:
                variant_tokens[ask.request] += len(ask.prompt) - len(ask.head)
            info = self.info()
            responses = [
                record_response(
                    i,
                    request,
                    encoded.get(i, []),
                    answers,
                    errors.get(i),
                    readings,
                    variant_tokens[i],
                    info,
                    self._adapter,
                )
                for i, request in enumerate(requests)
            ]
            return timed(responses, time.perf_counter() - started, time.time())

    def _asks(
        self, requests: Sequence[RecordRequest], encoded: dict[int, list[EncodedPrompt]]
    ) -> tuple[list[_Ask], list[_Ask]]:
        """Every question of every encoded request; the second list holds the generated ones whose prompt had
        to cut the text, which --long_documents chunk reads whole instead."""
        asks: list[_Ask] = []
        long_asks: list[_Ask] = []
        for i, prompts in encoded.items():
            for t, template in enumerate(requests[i].templates):
                for q, question in enumerate(template.questions):
                    ask = _Ask(i, template, (t, q), prompts[t].full(q), prompts[t].head)
                    chunked = self._read_long_documents and prompts[t].truncated and not question.scored
                    (long_asks if chunked else asks).append(ask)
        return asks, long_asks

    def _variant_asks(
        self, requests: Sequence[RecordRequest], encoded: dict[int, list[EncodedPrompt]], errors: dict[int, str]
    ) -> list[_Ask]:
        """The explained questions' prompts over each variant of their request's text (after the same head)."""
        asks: list[_Ask] = []
        for i, prompts in encoded.items():
            request = requests[i]
            for t, template in enumerate(request.templates):
                for q, question in enumerate(template.questions):
                    if not (question.explain and request.variants):
                        continue
                    for v, text in enumerate(request.variants):
                        try:
                            ids = self.prompts.encode({**request.fields, TEXT_FIELD: text}, template).full(q)
                        except ValueError as err:
                            errors.setdefault(i, f"explain: {err}")
                            break
                        asks.append(_Ask(i, template, (t, q), ids, prompts[t].head, variant=v))
        return [ask for ask in asks if ask.request not in errors]

    def _ask_scored(
        self, asks: list[_Ask], answers: dict[tuple[int, int, int], Answer], errors: dict[int, str]
    ) -> dict[tuple[int, int, int], dict[int, tuple[float, ...]]]:
        """Scored questions, grouped by their candidates and the head their prompts share; an explained
        question's variants join its group (one engine call), and their scores are returned by question."""
        groups: dict[tuple[tuple[str, ...], tuple[int, ...]], list[_Ask]] = {}
        for ask in asks:
            groups.setdefault((self.prompts.candidates(ask.template, ask.question), ask.head), []).append(ask)
        attempts: Attempts = {}  # this call's priors, failures included
        variants: dict[tuple[int, int, int], dict[int, tuple[float, ...]]] = {}
        for (candidates, head), members in groups.items():
            results = self._score([ask.prompt for ask in members], list(candidates), head)
            for ask, result in zip(members, results, strict=True):
                if result.error:
                    errors.setdefault(ask.request, result.error)
                elif ask.variant is not None:
                    variants.setdefault((ask.request, *ask.key), {})[ask.variant] = tuple(map(float, result.logprobs))
                else:
                    self._answer_scored(ask, result, answers, errors, attempts)
        return variants

    def _answer_scored(
        self,
        ask: _Ask,
        result: Any,
        answers: dict[tuple[int, int, int], Answer],
        errors: dict[int, str],
        attempts: Attempts,
    ) -> None:
        """A scored question's answer: the words' log-probabilities and their calibration prior."""
        try:
            prior = self._priors.get(ask.template, ask.question, attempts)
        except CalibrationFailed as err:
            errors.setdefault(ask.request, str(err))
            return
        answers[(ask.request, *ask.key)] = Answer(tuple(float(x) for x in result.logprobs), prior)

    def _ask_head(self, asks: list[_Ask], answers: dict[tuple[int, int, int], Answer], errors: dict[int, str]) -> None:
        """Scored questions answered by the head: one feature read per prompt, grouped by the shared head."""
        groups: dict[tuple[tuple[str, ...], tuple[int, ...]], list[_Ask]] = {}
        for ask in asks:
            words = ask.template.questions[ask.question].words
            mismatch = head_mismatch(self._head, words)
            if mismatch:
                errors.setdefault(ask.request, mismatch)
                continue
            groups.setdefault((words, ask.head), []).append(ask)
        for (words, head), members in groups.items():
            results = self._calls.run(
                [ask.prompt for ask in members],
                lambda chunk, words=words, head=head: head_answers(
                    self._head, words, chunk, head, lambda p, pooling, prefix: self._engine.features(
                        p, pooling=pooling, shared_prefix=prefix)),
            )  # fmt: skip
            for ask, result in zip(members, results, strict=True):
                if isinstance(result, str):
                    errors.setdefault(ask.request, result)
                else:
                    answers[(ask.request, *ask.key)] = result

    def _ask_generated(
        self, asks: list[_Ask], answers: dict[tuple[int, int, int], Answer], errors: dict[int, str]
    ) -> None:
        if not asks:
            return
        params = [ask.template.questions[ask.question].params for ask in asks]
        completions = self._generate(list(zip([ask.prompt for ask in asks], params, strict=True)))
        for ask, completion in zip(asks, completions, strict=True):
            if completion.error:
                errors.setdefault(ask.request, completion.error)
                continue
            answers[(ask.request, *ask.key)] = generated_answer(completion)

    def _ask_shared(
        self,
        asks: list[_Ask],
        encoded: dict[int, list[EncodedPrompt]],
        answers: dict[tuple[int, int, int], Answer],
        errors: dict[int, str],
    ) -> None:
        """The questions of templates that ask several: each record's trunk is read once (engine.branch), and
        every question branches off it. Trees are grouped by the head their trunks share."""
        trees: dict[tuple[int, int], list[_Ask]] = {}  # (request, template) -> its questions asked here
        for ask in asks:
            trees.setdefault((ask.request, ask.key[0]), []).append(ask)
        groups: dict[tuple[int, ...], list[list[_Ask]]] = {}
        for members in trees.values():
            groups.setdefault(members[0].head, []).append(members)
        attempts: Attempts = {}
        for head, members in groups.items():
            built = [
                Tree(tuple(encoded[m[0].request][m[0].key[0]].trunk), tuple(self._branch(a, encoded) for a in m))
                for m in members
            ]
            results = self._calls.run(built, lambda chunk, head=head: self._engine.branch(chunk, shared_prefix=head))
            for tree_asks, per_branch in zip(members, results, strict=True):
                for ask, result in zip(tree_asks, per_branch, strict=True):
                    if result.error:
                        errors.setdefault(ask.request, result.error)
                    elif ask.template.questions[ask.question].scored:
                        self._answer_scored(ask, result, answers, errors, attempts)
                    else:
                        answers[(ask.request, *ask.key)] = generated_answer(result)

    def _branch(self, ask: _Ask, encoded: dict[int, list[EncodedPrompt]]) -> Branch:
        tail = tuple(encoded[ask.request][ask.key[0]].tails[ask.question])
        question = ask.template.questions[ask.question]
        if question.scored:
            return Branch(tail, candidates=self.prompts.candidate_ids(ask.template, ask.question))
        return Branch(tail, params=question.params)

    def _ask_long(
        self,
        asks: list[_Ask],
        requests: Sequence[RecordRequest],
        answers: dict[tuple[int, int, int], Answer],
        errors: dict[int, str],
        readings: dict[tuple[int, int, int], LongReading],
    ) -> None:
        """Generated questions about texts too long for one prompt, read in chunks (``inference.long_documents``)."""
        if not asks:
            return
        jobs = [LongQuestion(requests[ask.request].fields, ask.template, ask.question) for ask in asks]
        for ask, reading in zip(asks, read_long_texts(jobs, self.prompts, self._generate), strict=True):
            readings[(ask.request, *ask.key)] = reading
            if reading.error:
                errors.setdefault(ask.request, reading.error)
                continue
            answers[(ask.request, *ask.key)] = Answer(
                text=reading.text, finish_reason=reading.finish_reason, output_tokens=reading.output_tokens
            )

    def _generate(self, calls: list[tuple[list[int], Any]]) -> list[Any]:
        """engine.generate over (prompt ids, params) pairs, in chunks that fit memory."""
        return self._calls.run(
            calls, lambda chunk: self._engine.generate([ids for ids, _ in chunk], [p for _, p in chunk])
        )

    def _score(self, prompts: list[list[int]], candidates: list[str], head: tuple[int, ...] | None) -> list[Any]:
        """Score with the template's head as the shared prefix: computed once, and each prompt's scores then
        depend on that prompt alone, never on its batch-mates. Scores are only compared among the words, so
        the engine computes the output layer for the words' tokens alone (restrict_vocab)."""
        return self._calls.run(
            prompts,
            lambda chunk: self._engine.score(chunk, candidates, restrict_vocab=True, shared_prefix=head),
        )
