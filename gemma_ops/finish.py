"""When a generated sequence is done: EOS or <end_of_turn>, a stop string, max_new_tokens, the context end.

Stop strings are matched on text that is detokenized incrementally: each new token is decoded with a few tokens of
context and only the text it adds is searched, so a step costs the same at the thousandth token as at the first
(decoding the whole output every step, plus a decode per prefix to find where to cut, grew with the output).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gemma_ops.outputs import FinishReason
from gemma_ops.sampling import SamplingParams

Decode = Callable[[Sequence[int]], str]
REPLACEMENT = "\ufffd"  # what a byte-fallback piece decodes to while its UTF-8 character is unfinished


class IncrementalDetokenizer:
    """The text of a growing token list, decoding a short window per new token instead of the whole list.

    The window is the tokens not yet settled plus, as context, the tokens of the last settled piece of text (a
    tokenizer may decode a token differently at the start of a text); the new text is what the window adds to
    its context. Text that ends in U+FFFD may be an unfinished UTF-8 character (byte-fallback pieces): it stays
    ``pending``, and its tokens stay in the window, until a later token completes it. Tokens that add no text
    (special tokens, which decoding skips) leave the window, so a run of them does not grow it.

    Invariants: ``text`` only grows; ``ends[k] == len(text)`` once k tokens were pushed. Where decoding is local
    (a token's text depends on the previous settled piece at most), ``text + pending == decode(tokens)`` and
    ``decode(tokens[:k])`` starts with ``text[:ends[k]]``. HF's byte fallback is not local in one case: an
    invalid byte run right after a byte-fallback character turns that character into U+FFFDs too; the settled
    text keeps the character and replaces only the invalid bytes, as UTF-8 decoding with replacement does.
    """

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self.text = ""  # settled: later tokens never change it
        self.pending = ""  # what the unsettled tokens add for now (a U+FFFD per unfinished byte)
        self.ends = [0]
        self._context: list[int] = []  # the tokens of the last settled piece, decoded again as context
        self._context_text = ""  # decode(_context)
        self._unsettled: list[int] = []  # tokens since that piece, not in ``text`` yet

    def push(self, token: int) -> None:
        """Add one token: settle the text it completes, or keep it pending."""
        self._unsettled.append(token)
        window = self._decode(self._context + self._unsettled)
        if window.startswith(self._context_text):
            added = window[len(self._context_text) :]
        else:  # the new tokens changed how the context decodes (see above): decode them on their own
            added = self._decode(self._unsettled)
        self.pending = ""
        if not added:  # nothing to show: skipped tokens, which no later token changes
            self._unsettled = []
        elif added.endswith(REPLACEMENT):
            self.pending = added
        else:
            self.text += added
            self._context, self._unsettled = self._unsettled, []
            self._context_text = self._decode(self._context)
        self.ends.append(len(self.text))


@dataclass(frozen=True)
class StopCut:
    """A stop string was found: the text before it, and how many tokens produce that text."""

    text: str
    keep: int


class StopStrings:
    """Watches one sequence's output for the first occurrence of any of its stop strings."""

    def __init__(self, stops: Sequence[str], decode: Decode) -> None:
        if not stops or not all(stops):
            raise ValueError(f"stop strings must be non-empty, got {stops!r}")
        self.stops = tuple(stops)
        self._longest = max(len(s) for s in self.stops)
        self.detokenizer = IncrementalDetokenizer(decode)

    def push(self, token: int) -> StopCut | None:
        """Add a token; the cut at the first stop string once the text holds one.

        Only where a match can start is searched: every earlier position was searched when its text settled.
        ``keep`` is the fewest tokens whose settled text covers the kept text: the last kept token is the one
        that completes it (it may also carry the stop string's start).
        """
        detok = self.detokenizer
        start = max(0, len(detok.text) - self._longest + 1)
        detok.push(token)
        window = detok.text[start:] + detok.pending
        found = [at for s in self.stops if (at := window.find(s)) >= 0]
        if not found:
            return None
        cut = start + min(found)
        text = (detok.text + detok.pending)[:cut]
        return StopCut(text, min(bisect_left(detok.ends, cut), len(detok.ends) - 1))


@dataclass(frozen=True)
class Finish:
    """Why a sequence ended; for a stop string also its kept text and token count."""

    reason: FinishReason
    text: str | None = None  # set when a stop string cut the text
    keep: int | None = None  # output tokens kept (a stop string drops those after the cut)


@dataclass(frozen=True)
class FinishChecker:
    """The finish rules of one engine, applied after every new token in this order: EOS or <end_of_turn> (unless
    ignore_eos), stop strings, then max_new_tokens or the context end."""

    stop_ids: frozenset[int]
    max_context: int
    decode: Decode

    def stop_strings(self, params: SamplingParams) -> StopStrings | None:
        """Per-sequence stop-string state (None without stop strings: then no text is decoded while generating)."""
        return StopStrings(params.stop, self.decode) if params.stop else None

    def check(
        self, params: SamplingParams, output: Sequence[int], context_length: int, stops: StopStrings | None
    ) -> Finish | None:
        """After ``output[-1]`` was appended (``context_length`` = prompt + output tokens): done, or None."""
        if not params.ignore_eos and output[-1] in self.stop_ids:
            return Finish("stop")
        if stops is not None:
            cut = stops.push(output[-1])
            if cut is not None:
                return Finish("stop", cut.text, cut.keep)
        if len(output) >= params.max_new_tokens or context_length >= self.max_context:
            return Finish("length")
        return None
