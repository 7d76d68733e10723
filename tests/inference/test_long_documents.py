"""--long_documents chunk: a record's text longer than the context is split at paragraph/sentence bounds, each
chunk is asked the generated question, then the joined answers are (map, then reduce); the response says how
many chunks were read. Scored questions and the default keep cutting the text."""

from __future__ import annotations

import pytest

from common.records import Record
from common.text import PARAGRAPH_BREAK
from gemma_ops.outputs import Completion
from inference.chunking import split_to_fit
from inference.runner import EngineRunner
from inference.settings import ModelSettings
from tests.transforms.fakes import FakeEngine
from transforms.registry import shortcut
from transforms.taskfile import parse_task_file

CONTEXT = 300  # FakeEngine: one token per character, BOS included


def cut_chars(text: str, room: int) -> list[str]:
    return [text[i : i + room] for i in range(0, len(text), room)]


def test_split_prefers_paragraphs_then_sentences_then_words():
    text = PARAGRAPH_BREAK.join(["aaa bbb. ccc ddd.", "eee fff ggg hhh iii."])
    assert split_to_fit(text, 100, len, cut_chars) == [text]  # it fits: one piece
    assert split_to_fit(text, 22, len, cut_chars) == ["aaa bbb. ccc ddd.", "eee fff ggg hhh iii."]
    assert split_to_fit(text, 12, len, cut_chars) == ["aaa bbb.", "ccc ddd.", "eee fff ggg", "hhh iii."]
    assert split_to_fit("x" * 25, 10, len, cut_chars) == ["x" * 10, "x" * 10, "x" * 5]  # no bound at all
    with pytest.raises(ValueError, match="no room"):
        split_to_fit(text, 0, len, cut_chars)


class RecordingEngine(FakeEngine):
    """Records each generate call's record texts (what sits between the prompt's last triple quotes)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.documents: list[list[str]] = []

    def generate(self, prompts, params):
        self.documents.append([self._document(self._text(p)) for p in prompts])
        return super().generate(prompts, params)


def long_text() -> str:
    """Three paragraphs, three times the fake engine's context in all."""
    paragraphs = [" ".join(f"Paragraph {p} sentence {s} says something." for s in range(10)) for p in range(3)]
    return "\n\n".join(paragraphs)


# A short generate task (the shipped summarize prompt is longer than this fake context on its own).
SUMMARIZE = parse_task_file(
    {"tasks": [{"name": "summary", "kind": "generate", "prompt": "Summary:", "max_new_tokens": 10}]}, "t.yaml"
)


def summarizer():
    from transforms.registry import build_task_set

    return build_task_set(SUMMARIZE, prefixed=False)


def test_a_text_three_times_the_context_is_read_whole_in_chunks():
    text = long_text()
    assert len(text) > 3 * CONTEXT
    engine = RecordingEngine(max_context=CONTEXT)
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion", long_documents="chunk"))
    tasks = summarizer()
    short, long = runner.run([tasks.build_request(Record("s", "a short one")), tasks.build_request(Record("l", text))])
    assert (short.chunks, short.truncated) == (1, False)
    mapped = engine.documents[1]  # call 0: the short record; 1: every chunk at once; 2: the reduce step
    assert long.chunks == len(mapped) >= 4 and engine.generate_calls == [1, len(mapped), 1]
    assert " ".join(mapped) == " ".join(text.split())  # every word read once, in order
    assert all(piece.endswith(".") for piece in mapped)  # cut at sentence bounds
    assert mapped[0].startswith("Paragraph 0 sentence 0") and mapped[-1].endswith("sentence 9 says something.")
    reduce_text = engine.documents[2][0]
    assert reduce_text.startswith("Summary: Paragraph 0 sentence<end_of_turn> Summary: Paragraph 0 sentence")
    assert (long.truncated, long.error) == (False, None)
    assert long.answers[0].text == " Summary: Summary: Paragraph 0<end_of_turn>"
    assert long.answers[0].output_tokens == 4 * (len(mapped) + 1)  # the fake answers 3 words + 1 per call
    assert long.prompt_tokens > len(text)  # all of it, plus one template per chunk and the reduce step
    row = tasks.to_row(Record("l", text), long, "run", "fp")
    assert (row["text"], row["chunks"], row["truncated"]) == ("Paragraph 0", len(mapped), False)


def test_the_default_still_truncates():
    engine = RecordingEngine(max_context=CONTEXT)
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion"))
    out = runner.run([summarizer().build_request(Record("l", long_text()))])[0]
    assert (out.truncated, out.chunks, engine.generate_calls) == (True, 1, [1])
    assert out.prompt_tokens == CONTEXT - 10
    assert PARAGRAPH_BREAK not in engine.documents[0][0]  # paragraph marks are read as spaces


def test_scored_questions_keep_reading_the_cut_text():
    engine = RecordingEngine(max_context=2000)  # the sentiment prompt's examples alone take ~700
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion", long_documents="chunk"))
    out = runner.run([shortcut("sentiment", calibrate=False).build_request(Record("l", "great " * 400))])[0]
    assert (out.error, out.truncated, out.chunks, engine.generate_calls) == (None, True, 1, [])
    assert out.prompt_tokens == 2000 - len(" positive")  # cut to the context, room kept for the longest word


def test_answers_that_do_not_shrink_end_in_one_truncated_read():
    """Answers as long as their pieces: reducing would never end, so the last step reads what fits."""

    class Echo(RecordingEngine):
        def generate(self, prompts, params):
            self.documents.append([self._document(self._text(p)) for p in prompts])
            return [Completion(self._document(self._text(p)) * 2, (1,), "length", len(p)) for p in prompts]

    engine = Echo(max_context=CONTEXT)
    runner = EngineRunner(engine, ModelSettings(prompt_style="completion", long_documents="chunk"))
    out = runner.run([summarizer().build_request(Record("l", long_text()))])[0]
    assert out.truncated is True and out.chunks == len(engine.documents[0]) >= 4
    assert [len(call) for call in engine.documents][-1] == 1
