"""GemmaModelHandler and EngineRunner: request handling with a fake engine, and RunInference with the
real engine on a tiny random Gemma 3 checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from gemma_ops.sampling import SamplingParams
from inference import handler as handler_module
from inference.batching import estimate_tokens
from inference.handler import GemmaModelHandler, pick_gpu
from inference.requests import PromptTemplate, Question, RecordRequest, RecordResponse, Rendering, Slot
from inference.runner import EngineRunner
from inference.settings import ModelSettings
from tests.tiny_models import build_tiny_checkpoint
from tests.transforms.fakes import FakeEngine, fake_engine_factory, fake_resolver

RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
LABELS = ("positive", "negative", "neutral")
COMPLETION = Rendering(('Review: """', Slot("text")), (('"""\nSentiment:',),), candidate_prefix=" ")
CHAT = Rendering(('Rate: """', Slot("text")), (('"""',),))


def ScoreRequest(document: str, labels=LABELS, calibration: tuple[str, ...] = ()) -> RecordRequest:
    """One scored question about a record, in the layout the tasks use."""
    question = Question(words=tuple(labels), calibration=calibration)
    return RecordRequest({"text": document}, (PromptTemplate(COMPLETION, CHAT, (question,)),))


def GenerateRequest(document: str, params: SamplingParams) -> RecordRequest:
    return RecordRequest({"text": document}, (PromptTemplate(COMPLETION, CHAT, (Question(params=params),)),))


def answer(response: RecordResponse):
    (only,) = response.answers
    return only


def test_runner_scores_in_order_and_isolates_a_bad_request():
    runner = EngineRunner(FakeEngine(), ModelSettings(prompt_style="completion"))
    requests = [
        ScoreRequest("great great"),
        ScoreRequest("POISON"),
        ScoreRequest("awful refund"),
    ]
    out = runner.run(requests)
    assert [type(r) for r in out] == [RecordResponse] * 3
    assert answer(out[0]).logprobs == (-3.0, -5.0, -5.0)
    assert out[1].error == "fake engine refused this prompt" and out[1].answers == ()
    assert answer(out[2]).logprobs == (-5.0, -3.0, -5.0)
    assert out[0].prompt_tokens == 1 + len('Review: """great great"""\nSentiment:')
    assert out[0].model == "fake-gemma" and out[0].style == "completion" and answer(out[0]).prior is None


def test_runner_prior_is_mean_over_calibration_documents_and_cached():
    engine = FakeEngine()
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion"))
    request = ScoreRequest("love it", calibration=("N/A", "hours great"))
    first = runner.run([request])[0]
    # "N/A" scores (-5,-5,-5); "hours great" scores (-4,-5,-4): the prior is their mean.
    assert answer(first).prior == (-4.5, -5.0, -4.5)
    runner.run([request])
    assert engine.score_calls == [1, 2, 1]  # the prior was scored once
    # Every call shares the template's head (BOS + text before the document): computed once by the engine,
    # and a record's scores then never depend on its batch-mates.
    head = tuple(engine.tokenizer.encode('Review: """'))
    assert engine.shared_prefixes == [head, head, head]


def test_runner_truncates_the_document_not_the_instructions():
    engine = FakeEngine(max_context=60)
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion"))
    params = SamplingParams(max_new_tokens=10)
    long_doc = "word " * 100
    out = runner.run([GenerateRequest(long_doc, params), GenerateRequest("short", params)])
    assert out[0].truncated is True and out[1].truncated is False
    # BOS + prefix + as much document as fits + suffix == context - max_new_tokens
    assert out[0].prompt_tokens == 60 - 10
    assert answer(out[0]).finish_reason == "stop" and answer(out[0]).text.startswith(" Summary: ")


def test_runner_overflow_error_policy_and_max_prompt_tokens():
    runner = EngineRunner(
        FakeEngine(), ModelSettings(prompt_style="completion", max_prompt_tokens=40, on_overflow="error")
    )
    out = runner.run([ScoreRequest("x" * 100), ScoreRequest("great")])
    assert out[0].error is not None and "over the limit of 40" in out[0].error
    assert out[1].error is None and answer(out[1]).logprobs[0] == -4.0


def test_runner_chat_style_wraps_in_turns_and_drops_candidate_prefix():
    engine = FakeEngine(chat=True)
    runner = EngineRunner(engine, ModelSettings(prompt_style="auto"))
    assert runner.info().style == "chat"
    out = runner.run([ScoreRequest("great")])[0]
    expected = '<start_of_turn>user\nRate: """great"""<end_of_turn>\n<start_of_turn>model\n'
    assert out.prompt_tokens == 1 + len(expected)


def test_estimate_tokens_counts_bytes_and_output_budget():
    request = GenerateRequest("a" * 30, SamplingParams(max_new_tokens=7))
    size = len(('Review: """' + "a" * 30 + '"""\nSentiment:').encode())
    assert estimate_tokens(("key", request)) == size // 3 + 1 + 7
    assert estimate_tokens(ScoreRequest("é")) == (len('Review: """é"""\nSentiment:'.encode()) // 3) + 1 + 6


def test_estimate_tokens_weighs_explained_variants_with_their_tail():
    question = Question(words=LABELS, explain=True)
    template = PromptTemplate(COMPLETION, CHAT, (question,))
    request = RecordRequest({"text": "ab cd"}, (template,), variants=("cd", "ab"))
    size = len('Review: """ab cd"""\nSentiment:') + 2 * len('cd"""\nSentiment:')
    assert estimate_tokens(request) == size // 3 + 1 + 6 * 3  # the words scored after the record and 2 variants


def test_handler_rejects_bad_settings_with_a_hint():
    with pytest.raises(ValueError, match="batch_max_tokens"):
        GemmaModelHandler(ModelSettings(batch_max_tokens=0))
    with pytest.raises(ValueError, match="prompt_style"):
        GemmaModelHandler(ModelSettings(prompt_style="instruct"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inference_args"):
        GemmaModelHandler().validate_inference_args({"temperature": 1.0})


def test_model_copies_spread_over_gpus_by_free_memory(monkeypatch, tmp_path):
    assert pick_gpu([10, 30, 30, 5]) == 1
    devices = []

    def factory(path, **kwargs):
        devices.append(kwargs["device"])
        if kwargs["device"].startswith("cuda:"):
            free[int(kwargs["device"].split(":")[1])] -= 50  # the copy takes memory on its GPU
        return FakeEngine()

    free = [100, 120]
    monkeypatch.setattr(handler_module, "_gpu_count", lambda: 2)
    monkeypatch.setattr(handler_module, "_free_gpu_memory", lambda: list(free))
    monkeypatch.setattr(handler_module.tempfile, "gettempdir", lambda: str(tmp_path))
    handler = GemmaModelHandler(ModelSettings(model_copies=2), engine_factory=factory, model_resolver=fake_resolver)
    handler.load_model()
    handler.load_model()
    assert devices == ["cuda:1", "cuda:0"]
    GemmaModelHandler(ModelSettings(device="cpu"), engine_factory=factory, model_resolver=fake_resolver).load_model()
    assert devices[-1] == "cpu"  # an explicit --device wins


class RecordingLock:
    """Stands in for the machine-wide GPU lock: says whether it is held."""

    held = False

    def __init__(self, path) -> None:
        self.path = path

    def __enter__(self):
        RecordingLock.held = True

    def __exit__(self, *exc) -> None:
        RecordingLock.held = False


def test_copies_on_one_gpu_load_and_size_their_cache_budget_one_at_a_time(monkeypatch, tmp_path):
    """One GPU, two copies: each loads under the lock (its cache budget is measured there) and may take
    half of the 90% share, so their first calls cannot both size against the same free memory."""
    loads = []

    def factory(path, **kwargs):
        loads.append((RecordingLock.held, kwargs.get("device"), kwargs.get("cache_shared_by")))
        return FakeEngine()

    monkeypatch.setattr(handler_module, "_gpu_count", lambda: 1)
    monkeypatch.setattr(handler_module.fasteners, "InterProcessLock", RecordingLock)
    monkeypatch.setattr(handler_module.tempfile, "gettempdir", lambda: str(tmp_path))
    for copies, gpus in ((2, 1), (3, 1), (4, 2), (1, 1)):
        monkeypatch.setattr(handler_module, "_gpu_count", lambda gpus=gpus: gpus)
        monkeypatch.setattr(handler_module, "_free_gpu_memory", lambda gpus=gpus: [100] * gpus)
        settings = ModelSettings(model_copies=copies)
        GemmaModelHandler(settings, engine_factory=factory, model_resolver=fake_resolver).load_model()
    assert loads == [(True, None, 2), (True, None, 3), (True, "cuda:0", 2), (True, None, 1)]
    GemmaModelHandler(ModelSettings(device="cpu"), engine_factory=factory, model_resolver=fake_resolver).load_model()
    assert loads[-1] == (False, "cpu", None)  # on the CPU there is nothing to share


def test_handler_batches_by_estimated_tokens():
    handler = GemmaModelHandler(
        ModelSettings(batch_max_tokens=100), engine_factory=fake_engine_factory, model_resolver=fake_resolver
    )
    kwargs = handler.batch_elements_kwargs()
    assert kwargs["max_batch_size"] == 100 and kwargs["min_batch_size"] == 100
    huge = ScoreRequest("x" * 10_000)
    assert kwargs["element_size_fn"](("k", huge)) == 100  # capped: a huge record still forms its own batch
    assert handler.share_model_across_processes() is True and handler.model_copies() == 1
    per_process = GemmaModelHandler(ModelSettings(model_copies=0))
    assert per_process.share_model_across_processes() is False


def test_run_inference_keyed_one_result_per_element_in_order():
    handler = GemmaModelHandler(
        ModelSettings(model_copies=0), engine_factory=fake_engine_factory, model_resolver=fake_resolver
    )
    elements = [(f"k{i}", ScoreRequest(text)) for i, text in enumerate(["great", "awful", "hours"])]
    with BeamPipeline(runner=RUNNER) as p:
        out = (
            p
            | beam.Create(elements)
            | RunInference(handler)
            | beam.MapTuple(lambda key, r: (key, LABELS[max(range(3), key=lambda j: answer(r).logprobs[j])]))
        )
        assert_that(out, equal_to([("k0", "positive"), ("k1", "negative"), ("k2", "neutral")]))


# ------------------------------------------------------------------------------- real engine, tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    # a 256-token context, so a 400-word document has to be truncated
    return build_tiny_checkpoint("gemma3", tmp_path_factory.mktemp("tiny") / "gemma3", max_position_embeddings=256)


def test_run_inference_with_the_real_engine_on_a_tiny_model(tiny_model):
    handler = GemmaModelHandler(ModelSettings(model=str(tiny_model), device="cpu", dtype="float32", model_copies=0))
    docs = ["great food", "the order arrived broken", "open 9 to 5", "x " * 400]
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    elements = [(i, ScoreRequest(d, calibration=("N/A",))) for i, d in enumerate(docs)]
    elements += [(10 + i, GenerateRequest(d, params)) for i, d in enumerate(docs)]

    def check(pairs):
        pairs = sorted(pairs, key=lambda kv: kv[0])
        assert [k for k, _ in pairs] == [0, 1, 2, 3, 10, 11, 12, 13]
        for key, response in pairs:
            assert response.error is None, response.error
            assert response.model == tiny_model.name
            if key < 10:
                assert len(answer(response).logprobs) == 3 and len(answer(response).prior) == 3
                assert all(math.isfinite(x) and x < 0 for x in answer(response).logprobs)
            else:
                assert response.output_tokens == 4 and answer(response).finish_reason == "length"
        # the 400-word document fits the 256-token context only when cut
        assert pairs[3][1].truncated and pairs[7][1].truncated and pairs[7][1].prompt_tokens == 256 - 4
        assert not pairs[0][1].truncated

    with BeamPipeline(runner=RUNNER) as p:
        out = p | beam.Create(elements) | RunInference(handler)
        assert_that(out, check)
