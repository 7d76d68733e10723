"""GemmaEngine: continuous-batching generation and label scoring over one GemmaModel.

Generation loop (``generate``): waiting requests are admitted into free KV-cache slots while the step's prefill
token budget lasts; their prompts are prefilled together (packed, no padding); then every running request
decodes one token per step. A request that finishes (EOS or <end_of_turn>, a stop string, max_new_tokens, the
context end) frees its slot at once, and the next waiting request takes it. Results come back in input order.

Scoring (``score``): each prompt is prefilled once with every candidate continuation branching off it (a tree
mask), and logits are computed only at the positions that predict candidate tokens.
"""

from __future__ import annotations

import os
import zlib
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gemma_ops.kv_cache import KVCache
from gemma_ops.model import GemmaModel, PrefixKV, Segment
from gemma_ops.outputs import Completion, ScoreResult
from gemma_ops.sampling import SamplingParams, make_generator, sample_one
from gemma_ops.tokenizer import GemmaTokenizer
from gemma_ops.weights import load_model

Prompt = str | Sequence[int]
_GREEDY = SamplingParams()
CACHE_MEMORY_SHARE = 0.9  # of the memory free at load, the most the KV cache takes (split between copies)


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


def _free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    available = _host_available_bytes()
    container = _cgroup_available_bytes()  # a container (Docker, Dataflow) may allow less than the host has
    return min(available, container) if container is not None else available


def _host_available_bytes() -> int:
    try:  # Linux: memory available without swapping (free + reclaimable cache)
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no figure on this platform: do not cap
        return 2**62


def _cgroup_available_bytes() -> int | None:
    """cgroup v2 limit minus usage, or None where no limit is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Explicit dtype (object or name), else bfloat16 where the hardware runs it fast, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        resolved = getattr(torch, str(dtype), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16' or 'float32'")
        return resolved
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    fast_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if fast_bf16 else torch.float32


class GemmaEngine:
    def __init__(
        self,
        model: GemmaModel,
        tokenizer: GemmaTokenizer,
        config: EngineConfig,
        model_name: str,
        cache_shared_by: int = 1,
    ) -> None:
        """``cache_shared_by``: model copies sharing this device; each cache may take 1/n of the share."""
        if cache_shared_by < 1:
            raise ValueError(f"cache_shared_by must be >= 1, got {cache_shared_by}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.device = model.embed.weight.device
        self.dtype = model.embed.weight.dtype
        self.max_context = min(config.max_context, model.config.max_position_embeddings)
        model.init_rope(self.max_context)
        self._stop_ids = tokenizer.stop_ids | frozenset(model.config.eos_token_ids)
        self._cache: KVCache | None = None
        # Measured now, at load: copies that share a device load one at a time (the Beam handler holds a
        # machine-wide lock), so each budget sees the memory the copies before it took, and their caches,
        # sized later on each copy's first call, never overlap however those calls interleave.
        self._cache_budget = int(_free_memory_bytes(self.device) * CACHE_MEMORY_SHARE / cache_shared_by)
        self._cache_at_memory_limit = False  # fewer slots than last wanted; re-checked when more are wanted
        self._prefixes: list[PrefixKV] = []  # most recent first

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
    ) -> GemmaEngine:
        """Load a local HF-format Gemma checkpoint folder (see checkpoints.resolve_model for other sources)."""
        path = Path(path)
        device = resolve_device(device)
        model = load_model(path, device, resolve_dtype(dtype, device))
        config = EngineConfig(max_slots=max_slots, max_batch_tokens=max_batch_tokens, max_context=max_context)
        tokenizer = GemmaTokenizer.from_pretrained(path)
        return cls(model, tokenizer, config, model_name=path.name, cache_shared_by=cache_shared_by)

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

    def _cache_for(self, slots: int) -> KVCache:
        """A cache with at least ``slots`` slots, or as many as fit (at least one): within the budget fixed at
        load and 90% of the memory free now. A cache capped by memory is kept while no more fits, and grows
        once memory has been freed (checked only when a call wants more slots than it has)."""
        if self._cache is not None and self._cache.max_slots >= slots:
            return self._cache
        per_slot = KVCache.bytes_needed(self.model.config, 1, self.max_context, self.dtype.itemsize)
        held = self._cache.max_slots * per_slot if self._cache is not None else 0  # counts as free for a new one
        available = min(self._cache_budget, int((_free_memory_bytes(self.device) + held) * 0.9))
        fitting = available // per_slot
        if self._cache is not None and fitting <= self._cache.max_slots:
            self._cache_at_memory_limit = True
            return self._cache
        if fitting < 1:
            raise MemoryError(
                f"one KV-cache slot of {self.max_context} tokens needs {per_slot / 2**20:.0f} MiB, more than this "
                f"copy's share of the memory free on {self.device}; lower max_context (or the model copies)"
            )
        if self._cache is not None:
            self._cache = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand the old cache back before the larger one is allocated
        self._cache_at_memory_limit = fitting < slots
        self._cache = KVCache(self.model.config, min(slots, fitting), self.max_context, self.device, self.dtype)
        return self._cache

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
                waiting.append(_Running(index, ids, p, make_generator(p, fallback_seed=_content_seed(ids))))
        if waiting:
            cache = self._cache_for(min(self.config.max_slots, len(waiting)))
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
        params = request.params
        if not params.ignore_eos and request.output[-1] in self._stop_ids:
            request.finish_reason = "stop"
            return
        if params.stop:
            text = self.tokenizer.decode(request.output)
            cut = min((text.find(s) for s in params.stop if s in text), default=-1)
            if cut >= 0:
                request.finish_reason, request.text = "stop", text[:cut]
                # Keep the tokens up to the one that completes the kept text (it may carry the stop's start).
                keep = next(
                    k for k in range(len(request.output) + 1) if len(self.tokenizer.decode(request.output[:k])) >= cut
                )
                del request.output[keep:]
                return
        if len(request.output) >= params.max_new_tokens or request.last_position + 1 >= self.max_context:
            request.finish_reason = "length"

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
        rows = (
            torch.tensor(sorted({t for ids in cand_ids for t in ids}), device=self.device) if restrict_vocab else None
        )
        prefix_ids = tuple(int(t) for t in shared_prefix) if shared_prefix else ()
        results: list[ScoreResult | None] = [None] * len(prompts)
        groups: dict[bool, list[tuple[int, list[int]]]] = {True: [], False: []}  # extends the prefix?
        for index, (prompt, ids) in enumerate(zip(prompts, self._prompt_ids(prompts), strict=True)):
            error = self._prompt_error(prompt, ids, room=room)
            if error is not None:
                results[index] = ScoreResult((), len(ids), error)
            else:  # the prompt's last token stays outside the prefix: its hidden state predicts the candidates
                groups[
                    bool(prefix_ids) and len(ids) > len(prefix_ids) and tuple(ids[: len(prefix_ids)]) == prefix_ids
                ].append((index, ids))
        for uses_prefix, members in groups.items():
            prefix = self._prefix_kv(prefix_ids) if uses_prefix and members else None
            skip = prefix.length if prefix is not None else 0
            chunk: list[tuple[int, list[int]]] = []
            chunk_tokens = 0
            branch_tokens = sum(len(ids) - 1 for ids in cand_ids)
            for index, ids in members:
                size = len(ids) - skip + branch_tokens
                if chunk and chunk_tokens + size > self.config.max_batch_tokens:
                    self._score_chunk(chunk, cand_ids, rows, prefix, results)
                    chunk, chunk_tokens = [], 0
                chunk.append((index, ids))
                chunk_tokens += size
            if chunk:
                self._score_chunk(chunk, cand_ids, rows, prefix, results)
        return [r for r in results if r is not None]

    def _prefix_kv(self, tokens: tuple[int, ...]) -> PrefixKV:
        """Keys/values of a shared prefix, from the small most-recently-used store or computed once."""
        for i, cached in enumerate(self._prefixes):
            if cached.tokens == tokens:
                self._prefixes.insert(0, self._prefixes.pop(i))
                return cached
        prefix = self.model.encode_prefix(list(tokens))
        self._prefixes = [prefix, *self._prefixes[: self.config.max_cached_prefixes - 1]]
        return prefix

    def _target_logprobs(
        self, hidden: torch.Tensor, read_rows: list[int], targets: list[int], vocab_rows: torch.Tensor | None
    ) -> list[float]:
        """log P(targets[i]) from the hidden state at read_rows[i]: each distinct row's logits computed once
        (all candidates share the prompt's last row), a bounded number of rows at a time."""
        unique_rows = sorted(set(read_rows))
        slot_of = {row: i for i, row in enumerate(unique_rows)}
        where = torch.tensor([slot_of[r] for r in read_rows], device=self.device)
        target = torch.tensor(targets, device=self.device)
        if vocab_rows is not None:
            target = torch.searchsorted(vocab_rows, target)
        out = torch.empty(len(read_rows), dtype=torch.float32, device=self.device)
        step = 64 if vocab_rows is None else 4096  # full-vocabulary float32 rows are 1 MB each
        for first in range(0, len(unique_rows), step):
            rows = torch.tensor(unique_rows[first : first + step], device=self.device)
            logprobs = torch.log_softmax(self.model.logits(hidden[rows], vocab_rows).float(), dim=-1)  # [n, V|R]
            picked = (where >= first) & (where < first + len(rows))
            out[picked] = logprobs[where[picked] - first, target[picked]]
        return out.tolist()

    def _score_chunk(
        self,
        chunk: list[tuple[int, list[int]]],
        cand_ids: list[list[int]],
        vocab_rows: torch.Tensor | None,
        prefix: PrefixKV | None,
        results: list[ScoreResult | None],
    ) -> None:
        tokens: list[int] = []
        positions: list[int] = []
        segments: list[Segment] = []
        read_rows: list[int] = []  # packed row whose hidden state predicts each target
        targets: list[int] = []  # the candidate token predicted there
        skip = prefix.length if prefix is not None else 0
        for _, full_prompt in chunk:
            prompt = full_prompt[skip:]
            start, n = len(tokens), len(prompt)
            tokens.extend(prompt)
            positions.extend(range(skip, skip + n))
            branch = [0] * n
            for b, ids in enumerate(cand_ids, start=1):
                # Branch b feeds ids[:-1] after the prompt; row of ids[j-1] (or the prompt end) predicts ids[j].
                branch_start = len(tokens)
                tokens.extend(ids[:-1])
                positions.extend(range(skip + n, skip + n + len(ids) - 1))
                branch.extend([b] * (len(ids) - 1))
                read_rows.extend([start + n - 1] + [branch_start + j for j in range(len(ids) - 1)])
                targets.extend(ids)
            length = len(tokens) - start
            branch_ids = torch.tensor(branch, device=self.device)
            segments.append(Segment(start=start, length=length, branch=branch_ids, prefix=prefix))
        with torch.inference_mode():
            hidden = self.model.forward_packed(
                torch.tensor(tokens, device=self.device),
                torch.tensor(positions, device=self.device),
                segments,
            )
            token_logprobs = self._target_logprobs(hidden, read_rows, targets, vocab_rows)
        cursor = 0
        for index, full_prompt in chunk:
            per_candidate = []
            for ids in cand_ids:
                per_candidate.append(sum(token_logprobs[cursor : cursor + len(ids)]))
                cursor += len(ids)
            results[index] = ScoreResult(tuple(per_candidate), len(full_prompt))
