"""engine.branch: several questions about a trunk, the trunk read once, with the same answers as asking each
question on its own (scores to float32 precision, greedy tokens exactly)."""

from __future__ import annotations

import pytest
import torch

from gemma_ops import GemmaEngine, SamplingParams
from gemma_ops.branching import Branch, Tree
from tests.tiny_models import WINDOW


@pytest.fixture(scope="module", params=["gemma-mqa", "gemma2", "gemma3"])
def engine(request, tiny_checkpoints) -> GemmaEngine:
    return GemmaEngine.from_pretrained(
        tiny_checkpoints[request.param], device="cpu", dtype="float32", max_slots=4, max_context=96
    )


def _ids(seed: int, n: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(10, 5000, (n,), generator=generator).tolist())


HEAD = (2, *_ids(0, 2 * WINDOW + 3))  # BOS + a few-shot head longer than the sliding window
LABELS = [" yes", " no"]
TOPICS = [" billing", " shipping", " other"]


def trees(engine: GemmaEngine) -> list[Tree]:
    labels, topics = (
        tuple(tuple(ids) for ids in engine.tokenizer.encode_batch(c, add_bos=False)) for c in (LABELS, TOPICS)
    )
    params = SamplingParams(max_new_tokens=2 * WINDOW, ignore_eos=True)
    out = []
    for i, n in enumerate([5, 3 * WINDOW, 11]):  # records shorter and longer than the window
        trunk = HEAD + _ids(10 + i, n)
        out.append(
            Tree(
                trunk,
                (
                    Branch(_ids(20 + i, 3), candidates=labels),
                    Branch(_ids(30 + i, 2), params=params),
                    Branch(_ids(40 + i, 4), candidates=topics),
                ),
            )
        )
    return out


def test_branches_answer_as_if_each_question_were_asked_alone(engine):
    asked = trees(engine)
    results = engine.branch(asked, shared_prefix=HEAD)
    params = asked[0].branches[1].params
    for tree, result in zip(asked, results, strict=True):
        yes_no, generated, topic = result
        alone = engine.score(
            [list(tree.trunk + tree.branches[0].tail)], LABELS, restrict_vocab=True, shared_prefix=HEAD
        )[0]
        torch.testing.assert_close(torch.tensor(yes_no.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=1e-5)
        alone = engine.score(
            [list(tree.trunk + tree.branches[2].tail)], TOPICS, restrict_vocab=True, shared_prefix=HEAD
        )[0]
        torch.testing.assert_close(torch.tensor(topic.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=1e-5)
        assert yes_no.prompt_tokens == len(tree.trunk) + 3 and len(topic.logprobs) == 3
        expected = engine.generate([list(tree.trunk + tree.branches[1].tail)], params)[0]
        assert generated.token_ids == expected.token_ids and len(generated.token_ids) == 2 * WINDOW
        assert generated.prompt_tokens == len(tree.trunk) + 2


def test_each_trunk_is_read_once(engine):
    asked = trees(engine)
    engine.branch(asked[:1], shared_prefix=HEAD)  # the shared head is computed (and kept) here
    before = engine.tokens_fed
    engine.branch(asked, shared_prefix=HEAD)
    expected = 0
    for tree in asked:
        expected += len(tree.trunk) - len(HEAD)  # the record, once
        for branch in tree.branches:
            expected += len(branch.tail)  # once, whatever follows it
            if branch.scored:  # each candidate then feeds all but its last token
                expected += sum(len(ids) - 1 for ids in branch.candidates)
    assert engine.tokens_fed - before == expected


def test_a_tree_that_does_not_fit_fails_alone(engine):
    asked = trees(engine)
    too_long = Tree(HEAD + _ids(99, 90), asked[0].branches)
    results = engine.branch([asked[0], too_long], shared_prefix=HEAD)
    assert all(r.error is None for r in results[0])
    assert [type(r).__name__ for r in results[1]] == ["ScoreResult", "Completion", "ScoreResult"]
    assert all("exceeds the engine's context of 96 tokens" in r.error for r in results[1])
    assert results[1][1].finish_reason == "error"


def test_branch_rules():
    with pytest.raises(ValueError, match="either scores candidates or generates"):
        Branch((1,))
    with pytest.raises(ValueError, match="needs a tail"):
        Branch((), params=SamplingParams())
