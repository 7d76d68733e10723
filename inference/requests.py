"""The requests a pipeline sends the model and the responses it gets back: small, frozen, picklable.

A model shared across processes (Beam's ``share_model_across_processes``) lives behind a proxy, so these
types are all that crosses the process boundary: plain data, no tensors. A request carries its task's prompt
template; the wording is the task's, the rendering (style, tokens, truncation) the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gemma_ops.sampling import SamplingParams


@dataclass(frozen=True)
class PromptSpec:
    """One rendering of a task prompt: fixed text before and after the untrusted document."""

    prefix: str
    suffix: str
    candidate_prefix: str = ""  # put before each label when scoring, e.g. " " after "Sentiment:"


@dataclass(frozen=True)
class PromptTemplate:
    """A task's prompt for base checkpoints (``completion``) and instruction-tuned ones (``chat``).

    ``chat`` holds the user turn's content; the runner wraps it in the tokenizer's turn format.
    """

    completion: PromptSpec
    chat: PromptSpec

    def spec(self, style: str) -> PromptSpec:
        return self.chat if style == "chat" else self.completion


@dataclass(frozen=True)
class ScoreRequest:
    """Score each label as the continuation of the prompt built around ``document``.

    ``words``: the text scored for each label when it differs from the label (a base model answers "none"
    far more readily than "neutral"); default: the labels. ``calibration_documents``: content-free inputs
    (e.g. "N/A") whose mean label scores are returned as the prior, so the parser can remove the model's bias
    towards some labels.
    """

    document: str
    template: PromptTemplate
    labels: tuple[str, ...]
    calibration_documents: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"a score request needs at least two distinct labels, got {self.labels!r}")
        if self.words and (len(self.words) != len(self.labels) or len(set(self.words)) != len(self.words)):
            raise ValueError(f"words must give one distinct word per label: {self.words!r} for {self.labels!r}")


@dataclass(frozen=True)
class GenerateRequest:
    """Generate a continuation of the prompt built around ``document``."""

    document: str
    template: PromptTemplate
    params: SamplingParams = field(default_factory=SamplingParams)


Request = ScoreRequest | GenerateRequest


@dataclass(frozen=True)
class ScoreResponse:
    logprobs: tuple[float, ...]  # log P(label | prompt), in the request's label order
    prior: tuple[float, ...] | None  # mean log P(label | content-free prompt); None without calibration
    prompt_tokens: int
    truncated: bool
    style: str
    model: str
    error: str | None = None


@dataclass(frozen=True)
class GenerateResponse:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int
    output_tokens: int
    truncated: bool
    style: str
    model: str
    error: str | None = None


Response = ScoreResponse | GenerateResponse


@dataclass(frozen=True)
class RunnerInfo:
    model_name: str
    max_context: int
    style: str  # the resolved prompt style: "completion" or "chat"
    load_seconds: float


class PromptTooLong(ValueError):
    """The prompt exceeds the context (or --max_prompt_tokens) and truncation is off or impossible."""


def error_response(request: Request, message: str, style: str, model: str) -> Response:
    """The response of a request that got no result: empty, with ``error`` saying why."""
    if isinstance(request, ScoreRequest):
        return ScoreResponse((), None, 0, False, style, model, message)
    return GenerateResponse("", "error", 0, 0, False, style, model, message)
