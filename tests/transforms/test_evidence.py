"""Evidence by occlusion: spans, ranking, the runner's one engine call per batch, rows and task-file keys.

The fake engine scores each label by how often its cue words appear in the record (tests/transforms/fakes.py),
so the word that carries the sentiment is known, and so is its drop: with it, the label scores one more.
"""

from __future__ import annotations

import math

import apache_beam as beam
import pytest
import yaml
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from common.records import Record
from inference.runner import EngineRunner
from inference.settings import ModelSettings
from tests.transforms.fakes import FakeEngine
from tests.transforms.test_tasks import FINGERPRINT, RUN_ID, handler
from transforms.evidence import MAX_SPANS, MIN_DROP, Span, spans, top_evidence, variants
from transforms.infer import InferTask
from transforms.registry import build_task_set, shortcut
from transforms.settings import TaskSettings
from transforms.taskfile import TaskFileError, parse_task_file


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    weights = [math.exp(x - top) for x in xs]
    return [w / sum(weights) for w in weights]


# One cue word lifts its label by 1 over the others (all at -5): its removal brings the label back to 1/3.
ONE_CUE_DROP = softmax([-4.0, -5.0, -5.0])[0] - 1 / 3


def test_spans_are_words_with_edge_punctuation_trimmed():
    text = 'It was "awful", really.'
    found = spans(text)
    assert [s.text for s in found] == ["It", "was", "awful", "really"]
    assert [text[s.start : s.end] for s in found] == ["It", "was", '"awful",', "really."]
    assert variants(text, found)[2] == "It was really."
    assert [s.text for s in spans("... ok")] == ["...", "ok"]  # punctuation alone stays as it is


def test_a_long_record_is_cut_into_at_most_max_spans_runs_of_words():
    words = [f"w{i}" for i in range(100)]
    found = spans(" ".join(words))
    assert len(found) == 25 <= MAX_SPANS  # ceil(100 / 32) = 4 words per span
    assert found[0].text == "w0 w1 w2 w3" and found[-1].text == "w96 w97 w98 w99"
    assert len(spans(" ".join(words[:32]))) == 32  # up to MAX_SPANS words: one span per word


@pytest.mark.parametrize("text", ["Great!", "  ok  ", "word"])
def test_a_record_too_short_to_occlude_has_no_spans(text):
    assert spans(text) == ()


def test_top_evidence_ranks_by_drop_and_drops_noise():
    found = tuple(Span(i, i + 1, name) for i, name in enumerate("abcde"))
    without = [0.5, 0.9 - MIN_DROP / 2, 0.2, 0.95, 0.2]  # full probability 0.9
    assert top_evidence(found, 0.9, without, top_k=3) == [
        {"text": "c", "drop": pytest.approx(0.7)},
        {"text": "e", "drop": pytest.approx(0.7)},  # a tie: the earlier span first
        {"text": "a", "drop": pytest.approx(0.4)},
    ]
    assert top_evidence(found, 0.9, without, top_k=10)[-1]["text"] == "a"  # b (noise) and d (a rise) are out
    with pytest.raises(ValueError, match="4 variant scores for 5 spans"):
        top_evidence(found, 0.9, without[:4], top_k=3)


def test_the_phrase_that_carries_the_sentiment_ranks_first_in_the_rows():
    tasks = shortcut("sentiment", explain=True)
    records = [
        Record("neg", "I opened the parcel on Monday and everything inside was broken"),
        Record("pos", "We came back on a rainy evening and loved every minute of it"),
        Record("short", "Excellent!"),
    ]
    with BeamPipeline(runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner") as p:
        rows, errors = p | beam.Create(records) | InferTask(tasks, handler(), RUN_ID, FINGERPRINT)
        picked = rows | beam.Map(lambda r: (r["id"], r["label"], r["evidence"]))
        expected = [
            ("neg", "negative", [{"text": "broken", "drop": pytest.approx(ONE_CUE_DROP)}]),
            ("pos", "positive", [{"text": "loved", "drop": pytest.approx(ONE_CUE_DROP)}]),
            ("short", "positive", []),
        ]
        assert_that(picked, equal_to(expected), label="evidence")
        assert_that(errors, equal_to([]), label="no errors")


def test_a_record_and_its_variants_are_scored_in_one_call_after_the_shared_head():
    engine = FakeEngine()
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion"))
    tasks = shortcut("sentiment", explain=True)
    text = " ".join(["filler"] * 60 + ["awful"] + ["filler"] * 39)  # 100 words: 25 spans of 4
    (response,) = runner.run([tasks.build_request(Record("r", text))])
    row = tasks.to_row(Record("r", text), response, RUN_ID, FINGERPRINT)
    assert engine.score_calls == [1 + 25, 3]  # the record and its 25 variants; then the calibration prior
    head = runner.prompts.head(tasks.templates[0])
    assert engine.shared_prefixes == [head, head]
    assert row["label"] == "negative"
    assert row["evidence"] == [{"text": "awful filler filler filler", "drop": pytest.approx(ONE_CUE_DROP)}]
    # Tokens: the record's prompt, then each variant after the shared head (the fake tokenizer: 1 per char).
    full = len(runner.prompts.encode(tasks.build_request(Record("r", text)).fields, tasks.templates[0]).full(0))
    variant_tokens = sum(full - len(head) - len(span.text) - 1 for span in spans(text))
    assert response.prompt_tokens == full + variant_tokens


def test_without_explain_nothing_extra_is_scored():
    engine = FakeEngine()
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion"))
    tasks = shortcut("sentiment")
    request = tasks.build_request(Record("r", "it was awful"))
    assert request.variants == ()
    runner.run([request])
    assert engine.score_calls == [1, 3]
    assert "evidence" not in tasks.schema().names


EXPLAINED = """
tasks:
  - name: tone
    kind: classify
    labels: [positive, negative]
    explain: {top_k: 1}
  - name: topic
    kind: classify
    labels: [billing, shipping]
"""


def test_task_file_explain_adds_a_prefixed_evidence_column_with_top_k():
    tasks = build_task_set(parse_task_file(yaml.safe_load(EXPLAINED), "t.yaml"))
    names = tasks.schema().names
    assert "tone_evidence" in names and "topic_evidence" not in names
    record = Record("x", "awful billing, shipping was broken")
    engine = FakeEngine()
    (response,) = EngineRunner(engine, ModelSettings(prompt_style="completion")).run([tasks.build_request(record)])
    row = tasks.to_row(record, response, RUN_ID, FINGERPRINT)
    assert row["tone_label"] == "negative"
    assert [e["text"] for e in row["tone_evidence"]] == ["awful"]  # top_k 1: the first of two equal drops
    # One call scores tone's five variants after the shared head; the record's trunk is read once for both
    # questions (engine.branch; the fake scores each branch on its own); then each question's prior.
    assert engine.score_calls[0] == 5 and engine.branch_calls == [1] and engine.score_calls[1:] == [1, 1, 3, 3]
    assert engine.shared_prefixes[0] == engine.shared_prefixes[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "    explain: {top_k: 0}\n",
            "t.yaml: task 'topic': key 'explain': expected true, false or {top_k: N} with N from 1 to 10, "
            "got {'top_k': 0}",
        ),
        ("    explain: yes please\n", "t.yaml: task 'topic': key 'explain': expected true, or {top_k: 3}"),
        (
            "    explain: true\n    multi_label: true\n",
            "t.yaml: task 'topic': key 'explain': explain works on single-label tasks",
        ),
    ],
)
def test_bad_explain_keys_say_what_to_write(extra, message):
    text = f"tasks:\n  - name: topic\n    kind: classify\n    labels: [billing, shipping]\n{extra}"
    with pytest.raises(TaskFileError) as err:
        build_task_set(parse_task_file(yaml.safe_load(text), "t.yaml"))
    assert str(err.value).startswith(message)


def test_explain_flag_works_with_scored_shortcuts_only():
    assert "evidence" in shortcut("classify", labels=("a", "b"), explain=True).schema().names
    with pytest.raises(ValueError, match="--task summarize: --explain works with the scored tasks"):
        TaskSettings(task="summarize", explain=True)
    with pytest.raises(ValueError, match=r"--explain tune the --task shortcuts; .*explain: true"):
        TaskSettings(task_file="docs/examples/ticket_tasks.yaml", explain=True)


@pytest.mark.embedded
def test_on_the_embedded_model_the_opinion_word_ranks_first():
    from gemma_ops import GemmaEngine, default_model_path

    engine = GemmaEngine.from_pretrained(default_model_path(), device="cpu", dtype="bfloat16")
    runner = EngineRunner(engine, ModelSettings())
    tasks = shortcut("sentiment", explain=True)
    records = [
        Record("a", "We visited on a rainy Sunday with two friends and the meal was awful."),
        Record("b", "The parcel arrived on Tuesday afternoon and the headphones sound wonderful."),
        Record("c", "Great!"),
    ]
    responses = runner.run([tasks.build_request(record) for record in records])
    rows = [tasks.to_row(r, x, RUN_ID, FINGERPRINT) for r, x in zip(records, responses, strict=True)]
    assert [(row["label"], row["evidence"][:1]) for row in rows[:2]] == [
        ("negative", [{"text": "awful", "drop": pytest.approx(0.18, abs=0.08)}]),
        ("positive", [{"text": "wonderful", "drop": pytest.approx(0.25, abs=0.08)}]),
    ]
    assert rows[2]["evidence"] == []


def test_plan_counts_what_the_variants_cost():
    runner = EngineRunner(FakeEngine(), ModelSettings(prompt_style="completion"))
    record = Record("r", "it was awful")
    plain, explained = (
        shortcut("sentiment").build_request(record),
        shortcut("sentiment", explain=True).build_request(record),
    )
    (plain_response,), (explained_response,) = runner.run([plain]), runner.run([explained])
    words = len(" positive") + len(" negative") + len(" none")  # the fake tokenizer: one token per character
    extra = runner.prompts.request_tokens(explained) - runner.prompts.request_tokens(plain)
    assert extra == explained_response.prompt_tokens - plain_response.prompt_tokens + 3 * words  # 3 variants
