"""The requests a pipeline sends the model and the responses it gets back: small, frozen, picklable.

A model shared across processes (Beam's ``share_model_across_processes``) lives behind a proxy, so these
types are all that crosses the process boundary: plain data, no tensors.

One request asks one or more questions about one record. Each of its templates holds tasks' wording as
trusted text with slots for the record's untrusted fields, in two renderings (completion prompts for base
checkpoints, the user turn's content for instruction-tuned ones). Every question's prompt is its template's
``trunk`` (instructions, examples, the record) followed by that question's ``tail``: the trunk is read once
and every question of the template branches off it. A task that lays out the record its own way brings its
own template. The runner does the rendering (style, tokens, truncation); the tasks bring the wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gemma_ops.sampling import SamplingParams

TEXT_FIELD = "text"  # the record's main text: the field cut to fit the context


@dataclass(frozen=True)
class Slot:
    """Where an untrusted record field goes in a prompt (tokenized without control tokens)."""

    name: str


Piece = str | Slot  # trusted template text, or a record field


@dataclass(frozen=True)
class Rendering:
    """One prompt style's text: the trunk every question shares, then one tail per question."""

    trunk: tuple[Piece, ...]
    tails: tuple[tuple[Piece, ...], ...]
    candidate_prefix: str = ""  # put before each scored word, e.g. " " after "Sentiment:"

    def __post_init__(self) -> None:
        if not self.trunk or not isinstance(self.trunk[0], str):
            raise ValueError("a prompt's trunk must start with trusted text (its shared head)")


@dataclass(frozen=True)
class Question:
    """What is asked at the end of one tail: score ``words`` (each a label's answer), or generate.

    ``calibration``: content-free record texts (e.g. "N/A") whose mean word scores come back as the prior,
    so the parser can remove the model's bias towards some words. ``explain``: score the words after each of
    the request's ``variants`` of the record's text too (``Answer.variants``), for evidence by occlusion.
    """

    words: tuple[str, ...] = ()
    params: SamplingParams | None = None
    calibration: tuple[str, ...] = ()
    explain: bool = False

    def __post_init__(self) -> None:
        if (self.params is None) == (not self.words):
            raise ValueError("a question either scores words or generates (SamplingParams), not both or neither")
        if self.explain and not self.words:
            raise ValueError("only a scored question can be explained (its words scored on variants of the text)")
        if self.words and (len(self.words) < 2 or len(set(self.words)) != len(self.words)):
            raise ValueError(f"a scored question needs at least two distinct words, got {self.words!r}")

    @property
    def scored(self) -> bool:
        return self.params is None


@dataclass(frozen=True)
class PromptTemplate:
    """The questions about a record and how to ask them in each prompt style."""

    completion: Rendering
    chat: Rendering
    questions: tuple[Question, ...]

    def __post_init__(self) -> None:
        for name, rendering in (("completion", self.completion), ("chat", self.chat)):
            if len(rendering.tails) != len(self.questions):
                raise ValueError(f"{name} has {len(rendering.tails)} tails for {len(self.questions)} questions")

    def rendering(self, style: str) -> Rendering:
        return self.chat if style == "chat" else self.completion


@dataclass(frozen=True)
class RecordRequest:
    """Ask the templates' questions about one record; ``fields`` holds every slot's (untrusted) value.

    ``variants``: the record's text with one span left out, each (``transforms.evidence``); the questions
    that ``explain`` are scored on each of them too, in one engine call per batch, after the same shared head.
    """

    fields: Mapping[str, str]
    templates: tuple[PromptTemplate, ...]
    variants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError("a request needs at least one template")


@dataclass(frozen=True)
class Answer:
    """One question's result: word log-probabilities (and their prior) or generated text."""

    logprobs: tuple[float, ...] = ()  # log P(word | prompt), in the question's word order
    prior: tuple[float, ...] | None = None  # mean log P(word | content-free prompt); None without calibration
    text: str = ""
    finish_reason: str = ""  # "stop" | "length" for generated answers
    output_tokens: int = 0  # every engine call of the answer, chunks and reduce steps included
    variants: tuple[tuple[float, ...], ...] = ()  # explain: log P(word | variant), one row per request variant


@dataclass(frozen=True)
class RecordResponse:
    answers: tuple[Answer, ...]  # one per question, templates in order; empty when ``error`` is set
    # Tokens the model read for this record: each trunk once, every tail, every chunk, and each explained
    # variant after the shared head.
    prompt_tokens: int
    truncated: bool
    style: str
    model: str
    error: str | None = None
    chunks: int = 1  # --long_documents chunk: pieces the record's text was read in; 1 when it fit
    # The runner call that answered the record: its wall time shared out by the tokens each record read and
    # wrote (what this record cost the model), and when it ended (Unix seconds).
    inference_ms: float = 0.0
    finished_at: float = 0.0
    adapter: str | None = None  # the adapter the answers came through (lineage: its source and hash)

    @property
    def output_tokens(self) -> int:
        return sum(answer.output_tokens for answer in self.answers)


@dataclass(frozen=True)
class RunnerInfo:
    model_name: str
    max_context: int
    style: str  # the resolved prompt style: "completion" or "chat"
    load_seconds: float


class PromptTooLong(ValueError):
    """The prompt exceeds the context (or --max_prompt_tokens) and truncation is off or impossible."""


def error_response(message: str, style: str, model: str) -> RecordResponse:
    """The response of a request that got no result: empty, with ``error`` saying why."""
    return RecordResponse((), 0, False, style, model, message)
