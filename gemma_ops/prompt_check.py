"""Prompts as the engine takes them (text, or token ids) turned into ids, and the reasons one cannot run."""

from __future__ import annotations

from collections.abc import Sequence

from gemma_ops.tokenizer import GemmaTokenizer

Prompt = str | Sequence[int]


class PromptCheck:
    """Tokenizes and checks prompts before they reach the model: a bad prompt gets its own error, never its
    batch-mates'. Safe to use from several threads (it holds no state of its own)."""

    def __init__(self, tokenizer: GemmaTokenizer, vocab_size: int, max_context: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._max_context = max_context

    def ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Token ids per prompt: the text prompts encoded in one batched call, id lists taken as they are."""
        texts = [(i, p) for i, p in enumerate(prompts) if isinstance(p, str)]
        ids: list[list[int]] = [[] if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        nonempty = [(i, p) for i, p in texts if p]
        if nonempty:
            encoded = self._tokenizer.encode_batch([p for _, p in nonempty])
            for (i, _), tokens in zip(nonempty, encoded, strict=True):
                ids[i] = tokens
        return ids

    def split(
        self, prompts: Sequence[Prompt], room: int
    ) -> tuple[list[tuple[int, list[int]]], list[tuple[int, int, str]]]:
        """The prompts that can run, as (index, ids), and those that cannot, as (index, their token count, why)."""
        fitting, refused = [], []
        for index, (prompt, ids) in enumerate(zip(prompts, self.ids(prompts), strict=True)):
            error = self.error(prompt, ids, room)
            if error is None:
                fitting.append((index, ids))
            else:
                refused.append((index, len(ids), error))
        return fitting, refused

    def error(self, prompt: Prompt, ids: list[int], room: int) -> str | None:
        """Why a prompt cannot run (None when it can); ``room`` = tokens it needs after the prompt."""
        if (isinstance(prompt, str) and not prompt.strip()) or not ids:
            return "empty prompt: nothing to condition on"
        vocab = self._vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            return f"token ids out of range [0, {vocab}): {bad[:5]}"
        if len(ids) + room > self._max_context:
            return (
                f"prompt is {len(ids)} tokens; with {room} more it exceeds the engine's context of "
                f"{self._max_context} tokens (shorten it, or raise max_context)"
            )
        return None
