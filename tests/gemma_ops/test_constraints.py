"""Constrained decoding: bitmask unpacking, a random-logits engine that only ever writes schema-valid JSON (or
runs out of tokens, which the task turns into a dead letter), and constrained greedy == unconstrained greedy on
the embedded model where the model already writes valid output."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from gemma_ops import GemmaEngine, SamplingParams
from gemma_ops.constraints import compile_json_schema, unpack_bitmask, unpack_bitmask_on
from inference.requests import Answer
from transforms.extract import ExtractTask
from transforms.json_schema import check_value, normalize

SCHEMA = normalize(
    {
        "type": "object",
        "properties": {
            "product": {"type": "string", "maxLength": 8},
            "issue": {"enum": ["billing", "shipping", "defect", "other"]},
            "refund": {"type": "boolean"},
            "amount": {"type": ["number", "null"]},
            "count": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["late", "broken"]}, "maxItems": 2},
            "where": {"type": "object", "properties": {"city": {"type": ["string", "null"], "maxLength": 6}}},
        },
        "required": ["product", "issue", "refund", "amount", "count", "tags", "where"],
    }
)


def test_unpack_bitmask_reads_little_endian_words():
    bitmask = torch.tensor([[0b101, -1], [0, -(1 << 31)]], dtype=torch.int32)
    allowed = unpack_bitmask(bitmask, 70)  # [2, 70]
    assert allowed.shape == (2, 70) and allowed.dtype == torch.bool
    assert allowed[0, :4].tolist() == [True, False, True, False]
    assert not allowed[0, 3:32].any() and allowed[0, 32:64].all()
    assert not allowed[:, 64:].any()  # past the bitmask: forbidden
    assert allowed[1].nonzero().flatten().tolist() == [63]
    random = torch.randint(-(2**31), 2**31, (3, 5), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    for vocab in (150, 160, 170):  # the accelerator path unpacks the same bits
        assert torch.equal(unpack_bitmask_on(random, vocab), unpack_bitmask(random, vocab))


def test_an_unsupported_schema_names_the_keyword():
    with pytest.raises(ValueError, match=r'Unimplemented keys: \["not"\]'):
        compile_json_schema(json.dumps({"type": "object", "properties": {"a": {"not": {}}}}))


@pytest.fixture(scope="module")
def engine(tiny_checkpoints):
    return GemmaEngine.from_pretrained(tiny_checkpoints["gemma3"], device="cpu", dtype="float32", max_context=256)


def test_random_logits_give_valid_json_or_a_dead_letter(engine):
    """A random model sampling at temperature 1: every finished output parses and validates; every other one
    ran out of tokens and is refused by the task (a parse dead letter), never a broken row."""
    task = ExtractTask("t", SCHEMA)
    prompt = engine.tokenizer.encode("Ticket: late parcel\nJSON:\n")
    params = [
        SamplingParams(max_new_tokens=64, temperature=1.0, seed=seed, json_schema=task.params.json_schema)
        for seed in range(12)
    ]
    outputs = engine.generate([prompt] * len(params), params)
    valid = cut = 0
    for out in outputs:
        answer = Answer(text=out.text, finish_reason=out.finish_reason)
        if out.finish_reason == "stop":
            check_value(json.loads(out.text), SCHEMA)  # raises if the grammar let anything invalid through
            assert task.columns((answer,))["issue"] in ("billing", "shipping", "defect", "other")
            valid += 1
        else:
            assert out.finish_reason == "length" and len(out.token_ids) == 64
            with pytest.raises(ValueError, match="cut at max_new_tokens"):
                task.columns((answer,))
            cut += 1
    assert valid >= 3, (valid, cut)  # the check is not vacuous: most outputs finish


def test_constrained_and_free_requests_share_a_batch(engine):
    """A free request's tokens do not depend on a constrained batch-mate (its row of logits is left alone)."""
    prompt = engine.tokenizer.encode("Ticket: where is it\nJSON:\n")
    free = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    constrained = SamplingParams(
        max_new_tokens=12, temperature=1.0, seed=7, json_schema=ExtractTask("t", SCHEMA).params.json_schema
    )
    alone = engine.generate([prompt], free)[0]
    mixed = engine.generate([prompt, prompt], [constrained, free])
    assert mixed[1].token_ids == alone.token_ids
    assert mixed[0].text.startswith('{"product": "')


@pytest.mark.embedded
def test_constrained_greedy_equals_unconstrained_greedy_where_the_output_is_valid(embedded_path):
    engine = GemmaEngine.from_pretrained(embedded_path, device="cpu", dtype="float32", max_context=512)
    schema = normalize(
        {
            "type": "object",
            "properties": {
                "product": {"type": "string"},
                "issue": {"enum": ["billing", "shipping", "defect", "other"]},
                "refund_requested": {"type": "boolean"},
                "amount": {"type": ["number", "null"]},
            },
            "required": ["product", "issue", "refund_requested", "amount"],
        }
    )
    task = ExtractTask("ticket", schema)
    head = (
        "Extract the fields as JSON.\n\n"
        'Ticket: """My Acme blender arrived broken, I want my $49.99 back."""\nJSON:\n'
        '{"product": "Acme blender", "issue": "defect", "refund_requested": true, "amount": 49.99}\n\n'
    )
    prompts = [  # prompts where this model writes valid JSON unaided (not every prompt is one)
        head + 'Ticket: """I was charged twice for my Zen headphones subscription."""\nJSON:\n',
        head + 'Ticket: """Where is my parcel? The lamp was due Monday."""\nJSON:\n',
    ]
    constrained = engine.generate(prompts, replace(task.params, max_new_tokens=64))
    free = engine.generate(prompts, SamplingParams(max_new_tokens=64, stop=("\n",)))
    for c, f in zip(constrained, free, strict=True):
        check_value(json.loads(f.text), schema)  # the model writes valid output here unaided ...
        assert (c.text, c.finish_reason) == (f.text, "stop")  # ... and the constraint changes nothing
