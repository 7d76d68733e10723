"""One prefill of a record serves several questions about it.

A ``Tree`` is a trunk (a template head shared by every record, then the record) and branches: each branch is a
tail (a task's question) followed by candidates to score or by a continuation to generate. The trunk is read
once: the scored branches are packed after it in the same forward pass (a tree mask: a branch sees the trunk and
itself), and the keys and values of the trunk are kept for the generated branches, whose prefill then reads only
their tails. With ``restrict_vocab`` each branch's distribution is over its own candidates' tokens, as if it had
been scored alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gemma_ops.model import GemmaModel, PrefixKV, Segment
from gemma_ops.sampling import SamplingParams
from gemma_ops.scoring import pack_trees, split_by_budget, target_logprobs


@dataclass(frozen=True)
class Branch:
    """What follows the trunk: ``tail`` token ids, then ``candidates`` (token ids) to score or ``params`` to
    generate with."""

    tail: tuple[int, ...]
    candidates: tuple[tuple[int, ...], ...] = ()
    params: SamplingParams | None = None

    def __post_init__(self) -> None:
        if (self.params is None) == (not self.candidates):
            raise ValueError("a branch either scores candidates or generates (params), not both or neither")
        if any(not ids for ids in self.candidates):
            raise ValueError("a candidate needs at least one token")
        if self.params is not None and not self.tail:
            raise ValueError("a generated branch needs a tail (at least one token after the trunk) to prefill")

    @property
    def scored(self) -> bool:
        return self.params is None

    @property
    def room(self) -> int:
        """Context it needs after trunk and tail: its longest candidate (but the last token) or its output."""
        if self.params is not None:
            return self.params.max_new_tokens
        return max(len(ids) for ids in self.candidates) - 1


@dataclass(frozen=True)
class Tree:
    trunk: tuple[int, ...]
    branches: tuple[Branch, ...]


@dataclass
class TrunkPass:
    """What one pass over trunks gives: each scored branch's candidate log-probabilities, and the trunk keys and
    values of the trees that generate."""

    scores: dict[tuple[int, int], tuple[float, ...]] = field(default_factory=dict)  # (tree, branch) -> per candidate
    trunks: dict[int, PrefixKV] = field(default_factory=dict)  # tree -> its trunk (extending the shared prefix)


class Brancher:
    """Runs trees' trunks and scored branches as packed prefills, chunked by the token budget."""

    def __init__(self, model: GemmaModel, max_batch_tokens: int) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.tokens_fed = 0  # tokens run through the model: what sharing the trunk saves

    def run(self, trees: Sequence[tuple[int, Tree]], prefix: PrefixKV | None, restrict_vocab: bool) -> TrunkPass:
        """(index, tree) pairs whose trunks all extend ``prefix`` (or None) -> their scores and trunk keys/values."""
        skip = prefix.length if prefix is not None else 0
        sizes = [
            len(tree.trunk) - skip + sum(len(b.tail) + sum(len(c) - 1 for c in b.candidates) for b in tree.branches)
            for _, tree in trees
        ]  # fmt: skip
        result = TrunkPass()
        for chunk in split_by_budget(sizes, self.max_batch_tokens):
            self._run_chunk([trees[i] for i in chunk], prefix, restrict_vocab, result)
        return result

    def _run_chunk(
        self, trees: list[tuple[int, Tree]], prefix: PrefixKV | None, restrict_vocab: bool, result: TrunkPass
    ) -> None:
        device = self.model.embed.weight.device
        skip = prefix.length if prefix is not None else 0
        packed = pack_trees(
            [(tree.trunk, [(b.tail, b.candidates) for b in tree.branches if b.scored]) for _, tree in trees], skip
        )
        segments = [
            Segment(
                start,
                n,
                branch=torch.tensor(packed.branches[start : start + n]),  # host: read when the plan is built
                prefix=prefix,
                parent=torch.tensor(packed.parents[start : start + n]) if packed.parents else None,
            )
            for start, n in packed.segments
        ]
        generating = any(not b.scored for _, tree in trees for b in tree.branches)
        captured: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if generating else None
        self.tokens_fed += len(packed.tokens)
        with torch.inference_mode():
            hidden = self.model.forward_packed(
                torch.tensor(packed.tokens, device=device),
                torch.tensor(packed.positions, device=device),
                segments,
                capture=captured,
            )  # [T, D]
            self._read_scores(trees, packed.read_rows, packed.targets, hidden, restrict_vocab, result)
        if captured is not None:
            for (index, tree), (start, _) in zip(trees, packed.segments, strict=True):
                if any(not b.scored for b in tree.branches):
                    rows = slice(start, start + len(tree.trunk) - skip)
                    keys = tuple(k[:, rows].clone() for k, _ in captured)  # [KVH, trunk - skip, Dh] each
                    values = tuple(v[:, rows].clone() for _, v in captured)
                    result.trunks[index] = PrefixKV(tree.trunk, keys, values, parent=prefix)

    def _read_scores(
        self,
        trees: list[tuple[int, Tree]],
        read_rows: Sequence[int],
        targets: Sequence[int],
        hidden: torch.Tensor,
        restrict_vocab: bool,
        result: TrunkPass,
    ) -> None:
        """Each candidate's log-probability (the sum over its tokens), each branch normalized over its own
        candidates' tokens: targets are read in groups of branches with the same candidates."""
        device = hidden.device
        spans: list[tuple[int, int, int, int]] = []  # (tree, branch, first target, target count) per candidate
        cursor = 0
        for index, tree in trees:
            for b, branch in enumerate(tree.branches):
                for ids in branch.candidates:
                    spans.append((index, b, cursor, len(ids)))
                    cursor += len(ids)
        by_index = dict(trees)
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}  # candidate set -> target positions
        for index, b, first, count in spans:
            groups.setdefault(by_index[index].branches[b].candidates, []).extend(range(first, first + count))
        logprobs = [0.0] * len(targets)
        for candidates, positions in groups.items():
            rows = (
                torch.tensor(sorted({t for ids in candidates for t in ids}), device=device) if restrict_vocab else None
            )
            values = target_logprobs(
                self.model.logits, hidden, [read_rows[p] for p in positions], [targets[p] for p in positions], rows
            )
            for p, value in zip(positions, values, strict=True):
                logprobs[p] = value
        for index, b, first, count in spans:
            result.scores.setdefault((index, b), ())
            result.scores[(index, b)] += (sum(logprobs[first : first + count]),)
