"""GemmaEngine: continuous-batching generation and label scoring over one GemmaModel.

Generation loop (``generate``): waiting requests are admitted into free KV-cache slots while the step's prefill
token budget lasts; their prompts are prefilled together (packed, no padding); then every running request
decodes one token per step. A request that finishes (EOS or <end_of_turn>, a stop string, max_new_tokens, the
context end) frees its slot at once, and the next waiting request takes it. Results come back in input order.

Scoring (``score``): gemma_ops.scoring; each prompt is prefilled once with every candidate continuation branching
off it (a tree mask), and logits are computed only at the positions that predict candidate tokens.
"""

from __future__ import annotations

import zlib
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gemma_ops.device import KVCacheAllocator, resolve_device, resolve_dtype
from gemma_ops.finish import FinishChecker, StopStrings
from gemma_ops.kv_cache import KVCache
from gemma_ops.model import GemmaModel, Segment
from gemma_ops.outputs import Completion, ScoreResult
from gemma_ops.sampling import SamplingParams, make_generator, sample_one
from gemma_ops.scoring import Scorer
from gemma_ops.tokenizer import GemmaTokenizer
from gemma_ops.weights import load_model

Prompt = str | Sequence[int]
_GREEDY = SamplingParams()


@dataclass(frozen=True)
class EngineConfig:
    """Capacity knobs. max_context bounds prompt + generated tokens of one request."""

    max_slots: int = 64  # requests decoding at once (KV-cache slots)
    max_batch_tokens: int = 4096  # prompt tokens prefilled in one step (a longer single prompt runs alone)
    max_context: int = 4096
    max_cached_prefixes: int = 4  # score(shared_prefix=...) keys/values kept between calls

    def __post_init__(self) -> None:
        for name in ("max_slots", "max_batch_tokens", "max_context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class _Running:
    """One generation request in flight. Invariant: tokens[:cached] are in the KV cache of ``slot``."""

    index: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    stops: StopStrings | None = None
    slot: int = -1
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None  # set when a stop string cut the text

    @property
    def last_position(self) -> int:
        """Position of the newest token (not yet in the cache)."""
        return len(self.prompt) + len(self.output) - 1


def _content_seed(ids: list[int]) -> int:
    """Seed for a sampling request without one: from its prompt, so no batch-mate or position changes it."""
    return zlib.crc32(array("q", ids).tobytes())


class GemmaEngine:
    def __init__(
        self,
        model: GemmaModel,
        tokenizer: GemmaTokenizer,
        config: EngineConfig,
        model_name: str,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.device = model.embed.weight.device
        self.dtype = model.embed.weight.dtype
        self.max_context = min(config.max_context, model.config.max_position_embeddings)
        model.init_rope(self.max_context)
        stop_ids = tokenizer.stop_ids | frozenset(model.config.eos_token_ids)
        self._finish = FinishChecker(stop_ids, self.max_context, tokenizer.decode)
        self._caches = KVCacheAllocator(model.config, self.max_context, self.device, self.dtype)
        self._scorer = Scorer(model, config.max_batch_tokens, config.max_cached_prefixes)

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
    ) -> GemmaEngine:
        """Load a local HF-format Gemma checkpoint folder (see checkpoints.resolve_model for other sources)."""
        path = Path(path)
        device = resolve_device(device)
        model = load_model(path, device, resolve_dtype(dtype, device))
        config = EngineConfig(max_slots=max_slots, max_batch_tokens=max_batch_tokens, max_context=max_context)
        return cls(model, GemmaTokenizer.from_pretrained(path), config, model_name=path.name)

    # ----------------------------------------------------------------------------------------- helpers
    def _prompt_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        texts = [(i, p) for i, p in enumerate(prompts) if isinstance(p, str)]
        ids: list[list[int]] = [[] if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        nonempty = [(i, p) for i, p in texts if p]
        if nonempty:
            encoded = self.tokenizer.encode_batch([p for _, p in nonempty])
            for (i, _), tokens in zip(nonempty, encoded, strict=True):
                ids[i] = tokens
        return ids

    def _prompt_error(self, prompt: Prompt, ids: list[int], room: int) -> str | None:
        """Why a prompt cannot run (None when it can); ``room`` = tokens it needs after the prompt."""
        if (isinstance(prompt, str) and not prompt.strip()) or not ids:
            return "empty prompt: nothing to condition on"
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            return f"token ids out of range [0, {vocab}): {bad[:5]}"
        if len(ids) + room > self.max_context:
            return (
                f"prompt is {len(ids)} tokens; with {room} more it exceeds the engine's context of "
                f"{self.max_context} tokens (shorten it, or raise max_context)"
            )
        return None

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
        results: list[Completion | None] = [None] * len(prompts)
        waiting: deque[_Running] = deque()
        for index, (prompt, ids, p) in enumerate(zip(prompts, self._prompt_ids(prompts), per_request, strict=True)):
            error = self._prompt_error(prompt, ids, room=1)
            if error is not None:
                results[index] = Completion("", (), "error", len(ids), error)
            else:
                generator = make_generator(p, fallback_seed=_content_seed(ids))
                waiting.append(_Running(index, ids, p, generator, stops=self._finish.stop_strings(p)))
        if waiting:
            cache = self._caches.get(min(self.config.max_slots, len(waiting)))
            with torch.inference_mode():
                self._run(waiting, cache, results)
        return [r for r in results if r is not None]

    def _run(self, waiting: deque[_Running], cache: KVCache, results: list[Completion | None]) -> None:
        running: list[_Running] = []  # running[i].slot == i
        while waiting or running:
            admitted = self._admit(waiting, len(running), cache.max_slots)
            if admitted:
                for request in admitted:
                    request.slot = len(running)
                    running.append(request)
                self._prefill(admitted, cache)
                self._retire(running, cache, results)
            if running:  # a refill does not hold up the requests already decoding
                self._decode(running, cache)
                self._retire(running, cache, results)

    def _admit(self, waiting: deque[_Running], n_running: int, max_slots: int) -> list[_Running]:
        admitted: list[_Running] = []
        budget = self.config.max_batch_tokens
        while waiting and n_running + len(admitted) < max_slots:
            size = len(waiting[0].prompt)
            if admitted and size > budget:
                break
            admitted.append(waiting.popleft())
            budget -= size
        return admitted

    def _prefill(self, admitted: list[_Running], cache: KVCache) -> None:
        tokens, positions, segments, last_rows = [], [], [], []
        start = 0
        for request in admitted:
            n = len(request.prompt)
            tokens.extend(request.prompt)
            positions.append(torch.arange(n))
            segments.append(Segment(start=start, length=n, slot=request.slot))
            last_rows.append(start + n - 1)
            start += n
        hidden = self.model.forward_packed(
            torch.tensor(tokens, device=self.device),
            torch.cat(positions).to(self.device),
            segments,
            cache,
        )  # [T, D]
        logits = self.model.logits(hidden[torch.tensor(last_rows, device=self.device)])  # [k, V]
        self._append_sampled(admitted, logits)

    def _decode(self, running: list[_Running], cache: KVCache) -> None:
        tokens = torch.tensor([r.output[-1] for r in running], device=self.device)
        host_positions = [r.last_position for r in running]
        positions = torch.tensor(host_positions, device=self.device)
        hidden = self.model.forward_step(tokens, positions, cache, max(host_positions) + 1)  # [B, D]
        self._append_sampled(running, self.model.logits(hidden))

    def _append_sampled(self, requests: list[_Running], logits: torch.Tensor) -> None:
        """logits [B, V] -> one new token per request, then its finish check."""
        greedy_ids = torch.argmax(logits, dim=-1).tolist()
        for row, request in enumerate(requests):
            if request.params.greedy:
                token = greedy_ids[row]
            else:
                token = sample_one(logits[row].float().cpu(), request.params, request.generator)
            request.output.append(token)
            self._check_finished(request)

    def _check_finished(self, request: _Running) -> None:
        verdict = self._finish.check(request.params, request.output, request.last_position + 1, request.stops)
        if verdict is not None:
            request.finish_reason, request.text = verdict.reason, verdict.text
            if verdict.keep is not None:
                del request.output[verdict.keep :]

    def _retire(self, running: list[_Running], cache: KVCache, results: list[Completion | None]) -> None:
        done = [r for r in running if r.finish_reason is not None]
        for request in sorted(done, key=lambda r: r.slot, reverse=True):
            last = running.pop()
            if last is not request:  # keep running sequences in slots 0..n-1
                cache.move(last.slot, request.slot, length=last.last_position)
                last.slot = request.slot
                running[request.slot] = last
            text = request.text if request.text is not None else self.tokenizer.decode(request.output)
            results[request.index] = Completion(text, tuple(request.output), request.finish_reason, len(request.prompt))

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
        results: list[ScoreResult | None] = [None] * len(prompts)
        fitting: list[tuple[int, list[int]]] = []
        for index, (prompt, ids) in enumerate(zip(prompts, self._prompt_ids(prompts), strict=True)):
            error = self._prompt_error(prompt, ids, room=room)
            if error is not None:
                results[index] = ScoreResult((), len(ids), error)
            else:
                fitting.append((index, ids))
        rows = self._scorer.score(fitting, cand_ids, restrict_vocab=restrict_vocab, shared_prefix=prefix_ids)
        for index, ids in fitting:
            results[index] = ScoreResult(rows[index], len(ids))
        return [r for r in results if r is not None]
