"""generate: text written by the model for each record (a summary, a note for a support lead), cleaned.

A prompt without ``{text}`` is a question about the record shown above it, so it shares the record's prefill
with the file's other tasks:

    prompt: "One sentence for the support lead, who works the {channel} queue:"

A prompt that places ``{text}`` itself gets a prompt of its own. Every ``{field}`` (the text included) goes in
between triple quotes, whitespace collapsed: record text stays data whatever the template says.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from common.text import WHITESPACE
from gemma_ops.sampling import SamplingParams
from inference.requests import TEXT_FIELD, Answer, Piece, Question, Rendering
from transforms.examples import Example, load_examples
from transforms.prompting import CHAT, DATA_NOTE, DELIMITER, merge, record_block, render_template, template_fields
from transforms.task import Task
from transforms.taskfile import TaskFileError, where
from transforms.text import strip_control_token_text

HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
EXTRA_NEWLINES = re.compile(r"\n{3,}")


class GenerateTask(Task):
    """Columns: <output> (the cleaned text; ``text`` unless the file names it) and finish_reason."""

    def __init__(
        self,
        name: str,
        prompt: str,
        *,
        instructions: str = "",
        examples: tuple[Example, ...] = (),
        params: SamplingParams | None = None,
        stop: tuple[str, ...] | None = None,
        output: str = "text",
        input_label: str = "Text",
    ) -> None:
        self.name = name
        self.prompt = prompt
        self.instructions = instructions
        self.examples = examples
        self.output = output
        self.standalone = TEXT_FIELD in template_fields(prompt, name)
        # A base model goes on after its answer with a new line or the next example's record.
        default_stop = ("\n", f"{input_label}: {DELIMITER}")
        params = params or SamplingParams()
        self.params = SamplingParams(
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            seed=params.seed,
            stop=default_stop if stop is None else stop,
        )
        self._echo = _echo_pattern(prompt)
        self._next_record = re.compile(
            r"\n?\s*" + re.escape(input_label) + r":\s*" + re.escape(DELIMITER) + ".*", re.DOTALL
        )

    @classmethod
    def from_spec(
        cls, raw: Mapping[str, Any], source: str, read: Callable[[str], bytes], input_label: str
    ) -> GenerateTask:
        name = raw["name"]
        place = where(source, name, "prompt")
        fields = template_fields(raw["prompt"], place)
        examples: tuple[Example, ...] = ()
        if "examples" in raw:
            examples_place = where(source, name, "examples")
            examples = load_examples(raw["examples"], examples_place, "output", False, read)
            for example in examples:
                missing = [f for f in fields if f != TEXT_FIELD and example.field(f) is None]
                if missing:
                    raise TaskFileError(
                        f"{examples_place}: example {example.text[:40]!r} has no {missing[0]!r}, which the prompt names"
                    )
        stop = raw.get("stop")
        params = SamplingParams(
            max_new_tokens=raw.get("max_new_tokens", 64), temperature=raw.get("temperature", 0.0), seed=raw.get("seed")
        )
        return cls(
            name,
            raw["prompt"],
            instructions=raw.get("instructions", ""),
            examples=examples,
            params=params,
            stop=None if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop)),
            output=raw.get("output", "text"),
            input_label=input_label,
        )

    # -- prompt

    def _head(self, style: str) -> str:
        head = self.instructions + "\n\n" if self.instructions else ""
        return head + (DATA_NOTE if style == CHAT and self.standalone else "")

    def _example(self, example: Example, input_label: str) -> str:
        values = {**dict(example.fields), TEXT_FIELD: example.text}
        question = "".join(str(p) for p in render_template(self.prompt, values))
        if self.standalone:
            return f"{question} {example.answer}\n\n"
        return record_block(input_label, example.text) + f"{question} {example.answer}\n\n"

    def section(self, style: str, input_label: str) -> str:
        return self._head(style) + "".join(self._example(example, input_label) for example in self.examples)

    def tails(self, style: str) -> tuple[tuple[Piece, ...], ...]:
        if self.standalone:
            return ((),)
        return (merge([f"{DELIMITER}\n", *render_template(self.prompt)]),)

    def rendering(self, style: str, input_label: str) -> Rendering:
        pieces = merge([self.section(style, input_label), *render_template(self.prompt)])
        trunk = pieces if isinstance(pieces[0], str) else ("", *pieces)
        return Rendering(trunk, self.tails(style))

    def questions(self) -> tuple[Question, ...]:
        return (Question(params=self.params),)

    # -- columns

    def clean(self, text: str) -> str:
        """The model's text without control tokens, an echo of the prompt's last line, the start of another
        record, surplus whitespace or wrapping quotes; one line when a new line ends the answer."""
        text = strip_control_token_text(text)
        text = self._next_record.sub("", text)
        if self._echo is not None:
            text = self._echo.sub("", text)
        if "\n" in self.params.stop:  # a one-line answer: one clean line
            text = WHITESPACE.sub(" ", text).strip()
        else:
            text = EXTRA_NEWLINES.sub("\n\n", HORIZONTAL_SPACE.sub(" ", text)).strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
        return text

    def columns(self, answers: tuple[Answer, ...]) -> dict[str, Any]:
        (answer,) = answers
        if answer.finish_reason not in ("stop", "length"):
            raise ValueError(f"unexpected finish_reason {answer.finish_reason!r}")
        return {self.output: self.clean(answer.text), "finish_reason": answer.finish_reason}

    def fields(self) -> list[pa.Field]:
        return [
            pa.field(self.output, pa.string(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=False),
        ]


def _echo_pattern(prompt: str) -> re.Pattern[str] | None:
    """The prompt's last line (e.g. "Summary:") repeated at the start of the output, spacing aside."""
    lines = [line for line in prompt.strip().splitlines() if line.strip()]
    if not lines or "{" in lines[-1]:
        return None
    words = [re.escape(word) for word in lines[-1].split()]
    body = r"\s+".join(words).replace(":", r"\s*:")
    return re.compile(r"^\s*(" + body + r"\s*)+", re.IGNORECASE)
