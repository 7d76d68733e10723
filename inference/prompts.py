"""Rendering a request into the token ids the engine runs: the task's template around the record's text.

The prompt style is resolved once per model (Gemma's turn format for instruction-tuned checkpoints, plain
completion prompts for base ones). Templates and label sets are tokenized once, not once per record. The
template is trusted and may hold control tokens (the turn markers); the record's text is not, so it is
encoded on its own with ``allow_special=False``: a literal "<start_of_turn>" in a record becomes plain
characters and can never open a turn or end the prompt's delimiters early. A record too long for the
context is cut by tokens, never the instructions.
"""

from __future__ import annotations

from typing import Any

from inference.requests import GenerateRequest, PromptTemplate, PromptTooLong, Request, ScoreRequest
from inference.settings import Overflow, PromptStyle

_CHAT_SLOT = "\x00GEMMA-BEAM-DOCUMENT\x00"


def resolve_style(style: PromptStyle, tokenizer: Any) -> str:
    """``auto`` becomes ``chat`` for checkpoints with a chat template (instruction-tuned), else ``completion``."""
    if style == "auto":
        return "chat" if tokenizer.has_chat_template else "completion"
    return style


class PromptEncoder:
    """Token ids of a request's prompt and of the candidates it scores, for one tokenizer and context."""

    def __init__(
        self,
        tokenizer: Any,
        max_context: int,
        style: PromptStyle = "auto",
        max_prompt_tokens: int | None = None,
        overflow: Overflow = "truncate",
    ) -> None:
        self._tokenizer = tokenizer
        self.max_context = max_context
        self.style = resolve_style(style, tokenizer)
        self._max_prompt_tokens = max_prompt_tokens
        self._overflow = overflow
        self._template_ids: dict[PromptTemplate, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._candidate_ids: dict[tuple[str, ...], tuple[tuple[int, ...], ...]] = {}

    def candidates(self, request: ScoreRequest) -> tuple[str, ...]:
        """The strings scored for a request's labels in the resolved prompt style."""
        prefix = request.template.spec(self.style).candidate_prefix
        return tuple(prefix + word for word in (request.words or request.labels))

    def candidate_ids(self, request: ScoreRequest) -> tuple[tuple[int, ...], ...]:
        candidates = self.candidates(request)
        if candidates not in self._candidate_ids:
            encoded = self._tokenizer.encode_batch(list(candidates), add_bos=False)
            self._candidate_ids[candidates] = tuple(tuple(ids) for ids in encoded)
        return self._candidate_ids[candidates]

    def head(self, template: PromptTemplate) -> tuple[int, ...]:
        """Token ids of the template before the document (BOS included): every prompt of it starts so."""
        return self._template_token_ids(template)[0]

    def reserve(self, request: Request) -> int:
        """Context tokens a request needs after its prompt: its output budget, or its longest label."""
        if isinstance(request, GenerateRequest):
            return request.params.max_new_tokens
        return max(len(ids) for ids in self.candidate_ids(request))

    def prompt_ids(self, request: Request) -> tuple[list[int], bool]:
        """(token ids of the full prompt, whether the document was cut to fit)."""
        return self.encode(request.document, request.template, self.reserve(request))

    def request_tokens(self, request: Request) -> int:
        """Tokens a request costs the engine: its prompt, plus the candidates it scores or the most it may
        generate (what ``pipelines.plan`` sizes a job by)."""
        prompt = len(self.prompt_ids(request)[0])
        if isinstance(request, GenerateRequest):
            return prompt + request.params.max_new_tokens
        return prompt + sum(len(ids) for ids in self.candidate_ids(request))

    def encode(self, document: str, template: PromptTemplate, reserve: int) -> tuple[list[int], bool]:
        """Token ids of the full prompt, cutting the document (never the instructions) when it is too long."""
        limit = self.max_context - reserve
        if self._max_prompt_tokens is not None:
            limit = min(limit, self._max_prompt_tokens)
        head_ids, tail_ids = self._template_token_ids(template)
        head, tail = list(head_ids), list(tail_ids)
        body = self._tokenizer.encode(document, add_bos=False, allow_special=False)
        total = len(head) + len(body) + len(tail)
        if total <= limit:
            return head + body + tail, False
        if self._overflow == "error":
            raise PromptTooLong(
                f"prompt has {total} tokens, over the limit of {limit} "
                f"(context {self.max_context} minus {reserve} reserved for the output, or --max_prompt_tokens); "
                "shorten the record, raise --max_prompt_tokens or pass --on_overflow truncate"
            )
        room = limit - len(head) - len(tail)
        if room <= 0:
            raise PromptTooLong(
                f"the prompt template alone needs {len(head) + len(tail)} tokens but only {limit} fit; "
                "lower --max_new_tokens or raise --max_prompt_tokens"
            )
        return head + body[:room] + tail, True

    def _template_token_ids(self, template: PromptTemplate) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(head, tail): the template's token ids before (BOS included) and after the document."""
        if template not in self._template_ids:
            before, after = self._parts(template)
            head = tuple(self._tokenizer.encode(before))
            self._template_ids[template] = (head, tuple(self._tokenizer.encode(after, add_bos=False)))
        return self._template_ids[template]

    def _parts(self, template: PromptTemplate) -> tuple[str, str]:
        spec = template.spec(self.style)
        if self.style != "chat":
            return spec.prefix, spec.suffix
        wrapped = self._tokenizer.chat_prompt(spec.prefix + _CHAT_SLOT + spec.suffix)
        before, slot, after = wrapped.partition(_CHAT_SLOT)
        if not slot:
            raise ValueError("the tokenizer's chat_prompt dropped the document; cannot build a chat prompt")
        return before, after
