"""Scoring pieces without a model: packing, chunking, prefix matching, the prefix store, target log-probs."""

from __future__ import annotations

import pytest
import torch

from gemma_ops.model import PrefixKV
from gemma_ops.scoring import (
    PackedScoring,
    PrefixStore,
    extends_prefix,
    pack_for_scoring,
    pack_trees,
    split_by_budget,
    target_logprobs,
)


def test_packing_two_prompts_with_a_one_and_a_two_token_candidate():
    packed = pack_for_scoring([[2, 10, 11], [2, 20]], [[5], [6, 7]], prefix_length=0)
    assert packed == PackedScoring(
        tokens=(2, 10, 11, 6, 2, 20, 6),  # candidate [6, 7] feeds 6 only: 7 is predicted, never fed
        positions=(0, 1, 2, 3, 0, 1, 2),
        branches=(0, 0, 0, 2, 0, 0, 2),  # candidate [5] feeds nothing, so branch 1 has no tokens
        segments=((0, 4), (4, 3)),
        read_rows=(2, 2, 3, 5, 5, 6),  # the prompt's last row predicts each first token; row of 6 predicts 7
        targets=(5, 6, 7, 5, 6, 7),
    )


def test_packing_after_a_shared_prefix_continues_its_positions():
    packed = pack_for_scoring([[2, 9, 10, 11]], [[5, 6, 7], [8]], prefix_length=2)
    assert packed == PackedScoring(
        tokens=(10, 11, 5, 6),
        positions=(2, 3, 4, 5),
        branches=(0, 0, 1, 1),
        segments=((0, 4),),
        read_rows=(1, 2, 3, 1),
        targets=(5, 6, 7, 8),
    )


def test_packing_questions_feeds_each_tail_once_and_candidates_after_it():
    """Question 1 has tail [30, 31] and candidates [5] and [6, 7]; question 2 has no tail and candidate [8, 9]."""
    packed = pack_trees([([2, 10, 11], [([30, 31], [[5], [6, 7]]), ((), [[8, 9]])])], prefix_length=1)
    assert packed == PackedScoring(
        tokens=(10, 11, 30, 31, 6, 8),
        positions=(1, 2, 3, 4, 5, 3),  # the tail continues the prompt, candidates continue their tail
        branches=(0, 0, 1, 1, 3, 4),  # node 1: the tail; 2 and 3: its candidates ([5] feeds nothing); 4: [8, 9]
        segments=((0, 6),),
        read_rows=(3, 3, 4, 1, 5),  # the tail's last row predicts 5 and 6, row of 6 predicts 7; the prompt's, 8
        targets=(5, 6, 7, 8, 9),
        parents=(0, 0, 0, 0, 1, 0),  # candidate [6, 7] sees the tail; [8, 9] hangs off the prompt
    )


def test_split_by_budget_groups_consecutive_items():
    assert split_by_budget([3, 4, 2, 10, 1], budget=7) == [[0, 1], [2], [3], [4]]
    assert split_by_budget([1, 1, 1], budget=100) == [[0, 1, 2]]
    assert split_by_budget([], budget=5) == []


def test_a_prompt_extends_the_prefix_only_past_its_end():
    prefix = (2, 9, 10)
    assert extends_prefix([2, 9, 10, 11], prefix)
    assert not extends_prefix([2, 9, 10], prefix)  # its last token must predict the candidates
    assert not extends_prefix([2, 9, 11, 12], prefix)
    assert not extends_prefix([2, 9, 10, 11], ())


def _prefix(tokens: list[int]) -> PrefixKV:
    return PrefixKV(tuple(tokens), (torch.zeros(1, len(tokens), 2),), (torch.zeros(1, len(tokens), 2),))


def test_prefix_store_keeps_the_most_recently_used():
    encoded: list[list[int]] = []
    store = PrefixStore(lambda tokens: encoded.append(tokens) or _prefix(tokens), capacity=2)
    a = store.get((1, 2))
    store.get((3,))
    assert store.get((1, 2)) is a  # kept, not encoded again
    store.get((4, 5))  # evicts (3,), the least recently used
    assert [p.tokens for p in store] == [(4, 5), (1, 2)]
    assert encoded == [[1, 2], [3], [4, 5]]
    store.clear()
    assert list(store) == []


@pytest.mark.parametrize("restrict", [False, True])
def test_target_logprobs_read_each_target_at_its_row(restrict):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 8, generator=generator)  # vocabulary of 50
    hidden = torch.randn(150, 8, generator=generator)  # more distinct rows than one chunk of 64
    vocab_rows = torch.tensor([3, 7, 20, 41]) if restrict else None

    def logits(h: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return h @ (weight if rows is None else weight[rows]).T

    read_rows = [0, 0, 5, 149, 70, 70, 130]
    targets = [3, 7, 20, 41, 7, 3, 20]
    got = target_logprobs(logits, hidden, read_rows, targets, vocab_rows)
    full = torch.log_softmax(logits(hidden, vocab_rows), dim=-1)
    columns = [([3, 7, 20, 41].index(t) if restrict else t) for t in targets]
    expected = [float(full[r, c]) for r, c in zip(read_rows, columns, strict=True)]
    assert got == pytest.approx(expected, abs=1e-5)
