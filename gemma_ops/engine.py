"""GemmaEngine: continuous-batching generation and label scoring over one GemmaModel.

Generation (``generate``) is a short loop over a Scheduler: it picks the next batch (a prefill of newly admitted
prompts, packed without padding, or one decode step of every running request), the model runs it, and each request
takes its sampled token and its finish check (EOS or <end_of_turn>, a stop string, max_new_tokens, the context
end). A finished request frees its slot at once and the next waiting request takes it. Results come back in input
order. Scoring (``score``) is gemma_ops.scoring's; device, dtype and KV-cache sizing are gemma_ops.device's.

A serving engine (``serve``) runs the model on one loop thread (gemma_ops.engine_loop): callers on any thread share
one running batch, so a call's requests take the slots another call's finished requests free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from gemma_ops.adapters.lora import load_lora
from gemma_ops.branching import Branch, Brancher, Tree
from gemma_ops.config import EngineConfig
from gemma_ops.constraints import Constraints
from gemma_ops.decode_graphs import DecodeStep, decode_mode
from gemma_ops.device import KVCacheAllocator, resolve_device, resolve_dtype
from gemma_ops.engine_loop import EngineLoop, LoopParts, RequestSpec
from gemma_ops.features import FeatureReader, FeatureResult
from gemma_ops.finish import Finish, FinishChecker
from gemma_ops.kv_cache import KVCache
from gemma_ops.model import GemmaModel, Segment
from gemma_ops.outputs import Completion, ScoreResult
from gemma_ops.prompt_check import Prompt, PromptCheck
from gemma_ops.sampling import SamplingParams, content_seed, make_generator, sample_batch
from gemma_ops.scheduler import Batch, Request, Scheduler
from gemma_ops.scoring import Scorer, extends_prefix
from gemma_ops.tokenizer import GemmaTokenizer
from gemma_ops.weights import load_model

_T = TypeVar("_T")
_GREEDY = SamplingParams()


def _failed(branch: Branch, prompt_tokens: int, message: str) -> ScoreResult | Completion:
    """The result of a branch that could not run."""
    if branch.scored:
        return ScoreResult((), prompt_tokens, message)
    return Completion("", (), "error", prompt_tokens, message)


class GemmaEngine:
    """Generation and scoring over one model; holds the KV cache and the shared-prefix store between calls."""

    def __init__(
        self,
        model: GemmaModel,
        tokenizer: GemmaTokenizer,
        config: EngineConfig,
        model_name: str,
        cache_shared_by: int = 1,
    ) -> None:
        """``cache_shared_by``: model copies sharing this device; each KV cache may take 1/n of the memory."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.device = model.embed.weight.device
        self.dtype = model.embed.weight.dtype
        self.max_context = min(config.max_context, model.config.max_position_embeddings)
        model.init_rope(self.max_context)
        # before the KV-cache budget is taken (prepacking holds a copy of the output layer); seconds compiling:
        self.compile_seconds = model.speed_up(config.prepack_weights, config.compile_kernels, config.max_slots)
        stop_ids = tokenizer.stop_ids | frozenset(model.config.eos_token_ids)
        self._finish = FinishChecker(stop_ids, self.max_context, tokenizer.decode)
        self._constraints = Constraints(tokenizer.json_text(), model.config.vocab_size, stop_ids)
        self._caches = KVCacheAllocator(model.config, self.max_context, self.device, self.dtype, cache_shared_by)
        self._scorer = Scorer(model, config.max_batch_tokens, config.max_cached_prefixes)
        self._brancher = Brancher(model, config.max_batch_tokens)
        self._features = FeatureReader(model, config.max_batch_tokens, config.max_cached_prefixes)
        self.decoder = DecodeStep(model, decode_mode(config.decode_graphs, self.device))
        self._prefill_tokens = 0
        self._loop: EngineLoop | None = None
        self._prompts = PromptCheck(tokenizer, model.config.vocab_size, self.max_context)

    @property
    def tokens_fed(self) -> int:
        """Prompt tokens run through the model so far (prefills, scoring, shared prefixes): what sharing saves."""
        return self._prefill_tokens + self._scorer.tokens_fed + self._brancher.tokens_fed

    @property
    def mask_seconds(self) -> float:
        """Time spent so far filling and applying constrained requests' token masks (``json_schema``)."""
        return self._constraints.mask_seconds

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        max_slots: int = 64,
        max_batch_tokens: int = 4096,
        max_context: int = 4096,
        cache_shared_by: int = 1,
        adapter: str | Path | None = None,
        prepack_weights: bool | None = None,
        compile_kernels: bool | None = None,
        decode_graphs: bool | None = None,
    ) -> GemmaEngine:
        """Load a local HF-format Gemma checkpoint folder (see checkpoints.resolve_model for other sources).
        ``adapter``: a local LoRA folder in PEFT's format, checked and merged into the weights
        (gemma_ops.adapters.lora). ``prepack_weights``, ``compile_kernels``, ``decode_graphs``: see EngineConfig."""
        path = Path(path)
        device = resolve_device(device)
        model = load_model(path, device, resolve_dtype(dtype, device))
        if adapter is not None:
            load_lora(model, Path(adapter), path, path.name)
        config = EngineConfig(max_slots=max_slots, max_batch_tokens=max_batch_tokens, max_context=max_context,
                              prepack_weights=prepack_weights, compile_kernels=compile_kernels,
                              decode_graphs=decode_graphs)  # fmt: skip
        tokenizer = GemmaTokenizer.from_pretrained(path)
        return cls(model, tokenizer, config, model_name=path.name, cache_shared_by=cache_shared_by)

    # ------------------------------------------------------------------------------------------ serving
    def serve(self) -> None:
        """From now on, run the model on one loop thread shared by every caller (gemma_ops.engine_loop): calls
        from several threads may overlap, and their generation requests share one continuous batch."""
        if self._loop is None:
            parts = LoopParts(self._request, self._run_batch, lambda: self._caches.get(self.config.max_slots),
                              self.tokenizer.decode, self.config.max_batch_tokens)  # fmt: skip
            self._loop = EngineLoop(parts)

    @property
    def concurrent_calls(self) -> bool:
        """Whether several threads may call this engine at once (it is serving)."""
        return self._loop is not None

    def close(self) -> None:
        """Stop serving (the work already submitted finishes first); later calls run on the caller's thread."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    def _exclusive(self, run: Callable[[], _T]) -> _T:
        """``run()`` with the model to itself: on the loop thread between two steps when serving."""
        if self._loop is not None:
            return self._loop.call(run)
        with torch.inference_mode():
            return run()

    # -------------------------------------------------------------------------------------- generation
    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] = _GREEDY
    ) -> list[Completion]:
        """Generate a continuation for each prompt (str: tokenized with BOS; list of ints: taken as ids)."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts; wrap a single prompt in a list")
        per_request = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(per_request) != len(prompts):
            raise ValueError(f"{len(per_request)} SamplingParams for {len(prompts)} prompts")
        fitting, refused = self._prompts.split(prompts, room=1)
        results: list[Completion | None] = [None] * len(prompts)
        for index, tokens, error in refused:
            results[index] = Completion("", (), "error", tokens, error)
        self._generate([RequestSpec(index, ids, per_request[index]) for index, ids in fitting], results)
        return [r for r in results if r is not None]

    def _request(self, spec: RequestSpec) -> Request:
        params = spec.params
        generator = make_generator(params, fallback_seed=content_seed(spec.prompt))
        grammar = self._constraints.start(params.json_schema) if params.json_schema is not None else None
        stops = self._finish.stop_strings(params)
        return Request(spec.index, spec.prompt, params, generator, stops=stops, prefix=spec.prefix, grammar=grammar)

    def _generate(self, specs: list[RequestSpec], results: list[Completion | None]) -> None:
        """Completions of ``specs`` into ``results`` (at each spec's index): on the engine loop when serving,
        else by a scheduler of this call's own."""
        if not specs:
            return
        if self._loop is not None:
            for spec, completion in zip(specs, self._loop.generate(specs), strict=True):
                results[spec.index] = completion
            return
        with torch.inference_mode():
            waiting = [self._request(spec) for spec in specs]
            scheduler = Scheduler(waiting, self._caches.get(min(self.config.max_slots, len(waiting))),
                                  self.config.max_batch_tokens)  # fmt: skip
            while (batch := scheduler.schedule()) is not None:
                self._run_batch(batch, scheduler.cache)
                for request in scheduler.retire():
                    results[request.index] = request.completion(self.tokenizer.decode)

    def _run_batch(self, batch: Batch, cache: KVCache) -> None:
        """schedule -> run the model -> postprocess (sample, finish checks); the caller retires."""
        run = self._prefill if batch.prefill else self._decode
        self._postprocess(batch.requests, run(batch.requests, cache))

    def _prefill(self, requests: Sequence[Request], cache: KVCache) -> torch.Tensor:
        """Prompts packed back to back, keys/values written to their slots -> logits [k, V] of each last token."""
        tokens, positions, segments, last_rows = [], [], [], []
        start = 0
        for request in requests:
            fed, skip = request.fed, len(request.prompt) - len(request.fed)
            n = len(fed)
            tokens.extend(fed)
            positions.append(torch.arange(skip, skip + n))
            segments.append(Segment(start=start, length=n, slot=request.slot, prefix=request.prefix))
            last_rows.append(start + n - 1)
            start += n
        self._prefill_tokens += len(tokens)
        ids, where = torch.tensor(tokens, device=self.device), torch.cat(positions).to(self.device)  # [T] each
        hidden = self.model.forward_packed(ids, where, segments, cache)  # [T, D]
        return self.model.logits(hidden[torch.tensor(last_rows, device=self.device)])  # [k, V]

    def _decode(self, requests: Sequence[Request], cache: KVCache) -> torch.Tensor:
        """One step of the running requests (slots 0..B-1) -> logits [B, V] (gemma_ops.decode_graphs)."""
        hidden = self.decoder.step([r.output[-1] for r in requests], [r.last_position for r in requests], cache)
        return self.model.logits(hidden)  # [B, V]

    def _postprocess(self, requests: Sequence[Request], logits: torch.Tensor) -> None:
        """logits [B, V] -> one new token per request (within its grammar, if it has one), then its finish
        check: a grammar that is complete ends the request like a stop token."""
        self._constraints.mask(logits, [r.grammar for r in requests])
        params, generators = [r.params for r in requests], [r.generator for r in requests]
        tokens = sample_batch(logits, params, generators, self.model.kernels.greedy)
        for request, token in zip(requests, tokens, strict=True):
            request.append(token)
            verdict = self._finish.check(request.params, request.output, request.context_length, request.stops)
            if request.grammar is not None:
                if not request.grammar.consume(token):
                    verdict = Finish("error")
                elif request.grammar.done and (verdict is None or verdict.reason == "length"):
                    verdict = Finish("stop")
            if verdict is not None:
                request.finish(verdict)

    # ----------------------------------------------------------------------------------------- scoring
    def score(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[str],
        *,
        restrict_vocab: bool = False,
        shared_prefix: Sequence[int] | None = None,
    ) -> list[ScoreResult]:
        """log P(candidate | prompt) for every prompt x candidate.

        Each candidate is tokenized on its own (no BOS) and appended to the prompt's ids. With
        ``restrict_vocab`` the distribution at each position is taken over the candidates' tokens only (only
        those rows of the output layer are computed): the right quantity for choosing among the candidates,
        and far cheaper than the full vocabulary.

        ``shared_prefix``: token ids that prompts start with (a few-shot template): their keys and values are
        computed once and kept for later calls. A prompt's result depends only on the prompt and on this
        split, never on which other prompts share the call.
        """
        if isinstance(prompts, str):
            raise TypeError("score takes a list of prompts; wrap a single prompt in a list")
        if not candidates:
            raise ValueError("score needs at least one candidate")
        cand_ids = self.tokenizer.encode_batch(list(candidates), add_bos=False)
        empty = [c for c, ids in zip(candidates, cand_ids, strict=True) if not ids]
        if empty:
            raise ValueError(f"candidates tokenize to nothing: {empty}")
        room = max(len(ids) for ids in cand_ids) - 1  # the last candidate token is predicted, never fed
        prefix_ids = tuple(int(t) for t in shared_prefix) if shared_prefix else ()
        fitting, refused = self._prompts.split(prompts, room=room)
        results: list[ScoreResult | None] = [None] * len(prompts)
        for index, tokens, error in refused:
            results[index] = ScoreResult((), tokens, error)
        rows = self._exclusive(
            lambda: self._scorer.score(fitting, cand_ids, restrict_vocab=restrict_vocab, shared_prefix=prefix_ids)
        )
        for index, ids in fitting:
            results[index] = ScoreResult(rows[index], len(ids))
        return [r for r in results if r is not None]

    # ---------------------------------------------------------------------------------------- branching
    def branch(
        self, trees: Sequence[Tree], *, shared_prefix: Sequence[int] | None = None, restrict_vocab: bool = True
    ) -> list[list[ScoreResult | Completion]]:
        """Several questions about each trunk, the trunk read once (see gemma_ops.branching).

        Per tree, one result per branch in order: a ScoreResult (log P of each candidate after trunk + tail) or a
        Completion. ``shared_prefix``: token ids every trunk starts with, kept between calls as in ``score``."""
        prefix_ids = tuple(int(t) for t in shared_prefix) if shared_prefix else ()
        results: list[list[ScoreResult | Completion | None]] = [[None] * len(t.branches) for t in trees]
        groups: dict[bool, list[tuple[int, Tree]]] = {True: [], False: []}  # extends the shared prefix?
        for index, tree in enumerate(trees):
            errors = [self._prompts.error(list(tree.trunk + b.tail), list(tree.trunk + b.tail), b.room)
                      for b in tree.branches]  # fmt: skip
            if any(errors):
                message = next(e for e in errors if e)
                results[index] = [_failed(b, len(tree.trunk) + len(b.tail), message) for b in tree.branches]
                continue
            groups[extends_prefix(tree.trunk, prefix_ids)].append((index, tree))
        specs: list[RequestSpec] = []
        flat: list[tuple[int, int]] = []  # generation request index -> (tree, branch)
        for uses_prefix, members in groups.items():
            if not members:
                continue
            passed = self._exclusive(lambda members=members, uses_prefix=uses_prefix: self._brancher.run(
                members, self._scorer.prefixes.get(prefix_ids) if uses_prefix else None, restrict_vocab))  # fmt: skip
            for index, tree in members:
                for b, branch in enumerate(tree.branches):
                    prompt = list(tree.trunk + branch.tail)
                    if branch.scored:
                        results[index][b] = ScoreResult(passed.scores[(index, b)], len(prompt))
                    else:
                        specs.append(RequestSpec(len(flat), prompt, branch.params, passed.trunks[index]))
                        flat.append((index, b))
        completions: list[Completion | None] = [None] * len(flat)
        self._generate(specs, completions)
        for (index, b), completion in zip(flat, completions, strict=True):
            results[index][b] = completion
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------- features
    def features(
        self, prompts: Sequence[Prompt], *, pooling: str = "last", shared_prefix: Sequence[int] | None = None
    ) -> list[FeatureResult]:
        """Each prompt's final-norm hidden states pooled into one vector (gemma_ops.features), for a
        classification head: one prefill per prompt, no candidates, no output layer. ``shared_prefix`` as for
        ``score``: computed once and kept; a prompt's vector never depends on its batch-mates."""
        if isinstance(prompts, str):
            raise TypeError("features takes a list of prompts; wrap a single prompt in a list")
        prefix_ids = tuple(int(t) for t in shared_prefix) if shared_prefix else ()
        fitting, refused = self._prompts.split(prompts, room=0)
        results: list[FeatureResult | None] = [None] * len(prompts)
        for index, tokens, error in refused:
            results[index] = FeatureResult(None, tokens, error)
        vectors = self._exclusive(lambda: self._features.read(fitting, pooling, prefix_ids))
        for index, ids in fitting:
            results[index] = FeatureResult(vectors[index], len(ids))
        return [r for r in results if r is not None]
