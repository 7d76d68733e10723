"""--long_documents chunk: a generated question about a record whose text does not fit the context reads the
text whole.

Map, then reduce: the text is split into pieces that fit (``PromptEncoder.split_text``), the question is asked
about each piece, and its answers, joined, become the next text; that repeats until the joined answers fit one
prompt, whose answer is the result. For summarize that is "summarize each chunk, then summarize the
summaries". Every level of every long question in a call runs as one batched engine call. If a reduce level
would not shrink (answers as long as the pieces), the last level reads what fits and says ``truncated``.
Model output joined into the next text is made prompt-safe like a record's text: it is data, and stays
between the template's delimiters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from common.text import prompt_safe
from gemma_ops.outputs import Completion
from gemma_ops.sampling import SamplingParams
from inference.prompts import PromptEncoder
from inference.requests import TEXT_FIELD, PromptTemplate, PromptTooLong

Generate = Callable[[list[tuple[list[int], SamplingParams]]], list[Completion]]


@dataclass(frozen=True)
class LongQuestion:
    """One generated question of one template, about a record whose text is too long for one prompt."""

    fields: Mapping[str, str]
    template: PromptTemplate
    question: int


@dataclass(frozen=True)
class LongReading:
    """What reading the text for one question produced, over all its engine calls."""

    text: str
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    truncated: bool
    chunks: int  # pieces of the first (map) level
    error: str | None = None


@dataclass
class _Reading:
    """One question being answered. Invariant: ``text`` is what the next level splits."""

    job: LongQuestion
    text: str
    chunks: int = 0
    pieces: int = 0  # pieces of the level just run
    prompt_tokens: int = 0
    output_tokens: int = 0
    truncated: bool = False
    result: LongReading | None = None
    calls: list[tuple[list[int], SamplingParams]] = field(default_factory=list)


def _plan(reading: _Reading, prompts: PromptEncoder) -> None:
    """The next level's engine calls (PromptTooLong when even the template cannot fit)."""
    job = reading.job
    params = job.template.questions[job.question].params
    if params is None:
        raise ValueError("only generated questions are read in chunks; a scored one reads the cut text")
    pieces = prompts.split_text({**job.fields, TEXT_FIELD: reading.text}, job.template) or [reading.text]
    if reading.chunks == 0:
        reading.chunks = len(pieces)
    elif len(pieces) > 1 and len(pieces) >= reading.pieces:  # the answers do not shrink: read what fits, once
        pieces = [reading.text]
    reading.pieces = len(pieces)
    reading.calls = []
    for piece in pieces:
        encoded = prompts.encode({**job.fields, TEXT_FIELD: piece}, job.template)
        reading.truncated |= encoded.truncated
        reading.calls.append((encoded.full(job.question), params))


def _absorb(reading: _Reading, completions: Sequence[Completion]) -> None:
    """Take one level's answers: the result when it was the last level, else the next text."""
    reading.prompt_tokens += sum(c.prompt_tokens for c in completions)
    reading.output_tokens += sum(len(c.token_ids) for c in completions)
    failed = [(n, c.error) for n, c in enumerate(completions, start=1) if c.finish_reason == "error"]
    if failed:
        n, error = failed[0]
        reading.result = _result(reading, "", "error", f"chunk {n} of {len(completions)}: {error}")
        return
    if len(completions) == 1:
        reading.result = _result(reading, completions[0].text, completions[0].finish_reason)
        return
    joined = " ".join(prompt_safe(c.text) for c in completions if c.text.strip())
    if joined:
        reading.text = joined
    else:  # nothing to reduce: the answer is empty
        reading.result = _result(reading, "", completions[-1].finish_reason)


def _result(reading: _Reading, text: str, finish_reason: str, error: str | None = None) -> LongReading:
    return LongReading(
        text, finish_reason, reading.prompt_tokens, reading.output_tokens, reading.truncated, reading.chunks, error
    )


def read_long_texts(jobs: Sequence[LongQuestion], prompts: PromptEncoder, generate: Generate) -> list[LongReading]:
    """One LongReading per question, in order; ``generate`` runs a batch of (prompt ids, params)."""
    readings = [_Reading(job, job.fields[TEXT_FIELD]) for job in jobs]
    pending = list(readings)
    while pending:
        for reading in pending:
            try:
                _plan(reading, prompts)
            except PromptTooLong as err:
                reading.calls, reading.result = [], _result(reading, "", "error", str(err))
        running = [reading for reading in pending if reading.result is None]
        completions = generate([call for reading in running for call in reading.calls]) if running else []
        start = 0
        for reading in running:
            _absorb(reading, completions[start : start + len(reading.calls)])
            start += len(reading.calls)
        pending = [reading for reading in running if reading.result is None]
    return [reading.result for reading in readings if reading.result is not None]
