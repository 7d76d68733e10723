"""Label scoring: log P(candidate | prompt) for every prompt x candidate, one packed prefill per chunk of prompts.

Each prompt is packed once with every candidate continuation branching off it (a tree mask: a candidate token
sees the prompt and its own candidate only), and logits are computed only at the rows that predict candidate
tokens. A shared prefix (a few-shot template) is encoded once, kept in a small most-recently-used store, and every
prompt that extends it attends to its keys and values instead of recomputing them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gemma_ops.model import GemmaModel, PrefixKV, Segment

Logits = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # hidden [N, D], vocab rows -> [N, V|R]


@dataclass(frozen=True)
class PackedScoring:
    """Prompts and their candidate branches packed back to back into one row of T tokens.

    Per prompt: its tokens after the shared prefix, then per question its tail (a task's question after a shared
    record; may be empty) and, for each of its candidates, every candidate token but the last (the last one is
    predicted, never fed). Each tail and each candidate is a node of a tree: a node's tokens see the prompt, the
    node itself and its parent (the tail a candidate follows). ``read_rows[i]`` is the packed row whose hidden
    state predicts ``targets[i]``: the tail's last row (or the prompt's) for a candidate's first token, the previous
    candidate token's row after. Targets run prompt by prompt, candidate by candidate, token by token.
    """

    tokens: tuple[int, ...]  # [T]
    positions: tuple[int, ...]  # [T]: continue after the shared prefix
    branches: tuple[int, ...]  # [T]: 0 for prompt tokens, else the token's node
    segments: tuple[tuple[int, int], ...]  # (start, length) of each prompt with its branches
    read_rows: tuple[int, ...]  # [n_targets]
    targets: tuple[int, ...]  # [n_targets]
    parents: tuple[int, ...] = ()  # [T]: each token's node's parent (0: the prompt); () when every parent is 0


Question = tuple[Sequence[int], Sequence[Sequence[int]]]  # (tail ids, candidates' ids)


def pack_trees(trees: Sequence[tuple[Sequence[int], Sequence[Question]]], prefix_length: int) -> PackedScoring:
    """Pack (prompt, questions) trees; each prompt's first ``prefix_length`` tokens come from a shared prefix.
    A question's tail is fed once, and its candidates branch off the tail."""
    tokens: list[int] = []
    positions: list[int] = []
    branches: list[int] = []
    parents: list[int] = []
    segments: list[tuple[int, int]] = []
    read_rows: list[int] = []
    targets: list[int] = []
    for full_prompt, questions in trees:
        prompt = full_prompt[prefix_length:]
        start, end = len(tokens), len(full_prompt)  # ``end``: the position after the prompt
        tokens.extend(prompt)
        positions.extend(range(prefix_length, end))
        branches.extend([0] * len(prompt))
        parents.extend([0] * len(prompt))
        node = 0
        for tail, candidates in questions:
            parent, last_row = 0, start + len(prompt) - 1
            if tail:
                node += 1
                parent, last_row = node, len(tokens) + len(tail) - 1
                tokens.extend(tail)
                positions.extend(range(end, end + len(tail)))
                branches.extend([node] * len(tail))
                parents.extend([0] * len(tail))
            for ids in candidates:
                # A candidate feeds ids[:-1] after its tail; the row before each of its tokens predicts it.
                node += 1
                branch_start = len(tokens)
                tokens.extend(ids[:-1])
                positions.extend(range(end + len(tail), end + len(tail) + len(ids) - 1))
                branches.extend([node] * (len(ids) - 1))
                parents.extend([parent] * (len(ids) - 1))
                read_rows.extend([last_row] + [branch_start + j for j in range(len(ids) - 1)])
                targets.extend(ids)
        segments.append((start, len(tokens) - start))
    return PackedScoring(
        tuple(tokens),
        tuple(positions),
        tuple(branches),
        tuple(segments),
        tuple(read_rows),
        tuple(targets),
        tuple(parents) if any(parents) else (),
    )


def pack_for_scoring(
    prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], prefix_length: int
) -> PackedScoring:
    """Pack prompts (full ids; their first ``prefix_length`` tokens come from a shared prefix) with candidates."""
    return pack_trees([(prompt, [((), candidates)]) for prompt in prompts], prefix_length)


def split_by_budget(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices grouped so each group's sizes sum to at most ``budget`` (an oversized item alone)."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if chunk and total + size > budget:
            chunks.append(chunk)
            chunk, total = [], 0
        chunk.append(i)
        total += size
    if chunk:
        chunks.append(chunk)
    return chunks


def extends_prefix(ids: Sequence[int], prefix: tuple[int, ...]) -> bool:
    """Whether a prompt continues the shared prefix; its last token must stay outside the prefix, since that
    token's hidden state predicts the candidates."""
    return bool(prefix) and len(ids) > len(prefix) and tuple(ids[: len(prefix)]) == prefix


def target_logprobs(
    logits: Logits,
    hidden: torch.Tensor,
    read_rows: Sequence[int],
    targets: Sequence[int],
    vocab_rows: torch.Tensor | None,
) -> list[float]:
    """log P(targets[i]) from the hidden state at read_rows[i]; hidden [T, D], vocab_rows [R] sorted or None.

    Each distinct row's logits are computed once (all candidates share the prompt's last row), a bounded number
    of rows at a time: full-vocabulary float32 rows are 1 MB each.
    """
    device = hidden.device
    unique_rows = sorted(set(read_rows))
    slot_of = {row: i for i, row in enumerate(unique_rows)}
    where = torch.tensor([slot_of[r] for r in read_rows], device=device)  # [n_targets]
    target = torch.tensor(targets, device=device)  # [n_targets]
    if vocab_rows is not None:
        target = torch.searchsorted(vocab_rows, target)
    out = torch.empty(len(read_rows), dtype=torch.float32, device=device)
    step = 64 if vocab_rows is None else 4096
    for first in range(0, len(unique_rows), step):
        rows = torch.tensor(unique_rows[first : first + step], device=device)
        logprobs = torch.log_softmax(logits(hidden[rows], vocab_rows).float(), dim=-1)  # [n, V|R]
        picked = (where >= first) & (where < first + len(rows))
        out[picked] = logprobs[where[picked] - first, target[picked]]
    return out.tolist()


class PrefixStore:
    """Keys/values of the most recently used shared prefixes, so a template is encoded once for many calls."""

    def __init__(self, encode: Callable[[list[int]], PrefixKV], capacity: int) -> None:
        self._encode = encode
        self.capacity = capacity
        self._entries: list[PrefixKV] = []  # most recent first

    def get(self, tokens: tuple[int, ...]) -> PrefixKV:
        for i, cached in enumerate(self._entries):
            if cached.tokens == tokens:
                self._entries.insert(0, self._entries.pop(i))
                return cached
        prefix = self._encode(list(tokens))
        self._entries = [prefix, *self._entries[: self.capacity - 1]]
        return prefix

    def __iter__(self) -> Iterator[PrefixKV]:
        return iter(self._entries)

    def clear(self) -> None:
        self._entries.clear()


class Scorer:
    """Scores valid prompts for one engine: groups them by shared-prefix use, chunks them by the token budget,
    runs each chunk as one packed prefill and reads the candidates' log-probabilities."""

    def __init__(self, model: GemmaModel, max_batch_tokens: int, max_cached_prefixes: int) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.prefixes = PrefixStore(self._encode_prefix, max_cached_prefixes)
        self.tokens_fed = 0  # tokens run through the model, shared prefixes included

    def _encode_prefix(self, tokens: list[int]) -> PrefixKV:
        self.tokens_fed += len(tokens)
        return self.model.encode_prefix(tokens)

    def score(
        self,
        prompts: Sequence[tuple[int, list[int]]],
        candidates: list[list[int]],
        *,
        restrict_vocab: bool,
        shared_prefix: tuple[int, ...],
    ) -> dict[int, tuple[float, ...]]:
        """(index, ids) of prompts that fit -> index: one log-probability per candidate.

        With ``restrict_vocab`` the distribution is taken over the candidates' tokens only."""
        device = self.model.embed.weight.device
        vocab_rows = (
            torch.tensor(sorted({t for ids in candidates for t in ids}), device=device) if restrict_vocab else None
        )
        groups: dict[bool, list[tuple[int, list[int]]]] = {True: [], False: []}  # extends the prefix?
        for index, ids in prompts:
            groups[extends_prefix(ids, shared_prefix)].append((index, ids))
        branch_tokens = sum(len(ids) - 1 for ids in candidates)
        rows: dict[int, tuple[float, ...]] = {}
        for uses_prefix, members in groups.items():
            if not members:
                continue
            prefix = self.prefixes.get(shared_prefix) if uses_prefix else None
            skip = prefix.length if prefix is not None else 0
            sizes = [len(ids) - skip + branch_tokens for _, ids in members]
            for chunk in split_by_budget(sizes, self.max_batch_tokens):
                indices = [members[i][0] for i in chunk]
                values = self._score_chunk([members[i][1] for i in chunk], candidates, vocab_rows, prefix)
                rows.update(zip(indices, values, strict=True))
        return rows

    def _score_chunk(
        self,
        prompts: list[list[int]],
        candidates: list[list[int]],
        vocab_rows: torch.Tensor | None,
        prefix: PrefixKV | None,
    ) -> list[tuple[float, ...]]:
        """One packed prefill -> per prompt, each candidate's log-probability (the sum over its tokens)."""
        device = self.model.embed.weight.device
        packed = pack_for_scoring(prompts, candidates, prefix.length if prefix is not None else 0)
        self.tokens_fed += len(packed.tokens)
        segments = [
            Segment(
                start=start,
                length=n,
                branch=torch.tensor(packed.branches[start : start + n]),  # host: read when the plan is built
                prefix=prefix,
            )
            for start, n in packed.segments
        ]
        with torch.inference_mode():
            hidden = self.model.forward_packed(
                torch.tensor(packed.tokens, device=device), torch.tensor(packed.positions, device=device), segments
            )  # [T, D]
            token_logprobs = target_logprobs(self.model.logits, hidden, packed.read_rows, packed.targets, vocab_rows)
        rows: list[tuple[float, ...]] = []
        cursor = 0
        for _ in prompts:
            per_candidate = []
            for ids in candidates:
                per_candidate.append(sum(token_logprobs[cursor : cursor + len(ids)]))
                cursor += len(ids)
            rows.append(tuple(per_candidate))
        return rows
