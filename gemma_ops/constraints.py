"""Constrained decoding: a JSON schema becomes a grammar (llguidance) that, at every step, allows only the tokens
that keep the output a prefix of a document the schema accepts. Generic: no prompt wording, no task knowledge.

llguidance was measured against xgrammar and outlines-core on Gemma's 262k-token vocabulary on CPU: the only one
whose outputs were all valid (xgrammar let control characters into strings, outlines-core was slow to build and
let invalid outputs through); a schema compiles in about a millisecond, a batch's masks are filled in parallel.

The token table llguidance needs is built once per engine, on the first constrained request (seconds, about
half a GB); each distinct schema is compiled once, and every request gets a copy of its compiled matcher.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

# Compact JSON with Python's separators: what json.dumps writes, so examples in a prompt read the same way.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def compile_json_schema(schema: str) -> str:
    """A JSON schema (text) -> llguidance grammar; ValueError naming what the grammar library refuses."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as err:
        raise ValueError(f"not a JSON schema: {err}") from err
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(f"the JSON schema cannot be used to constrain decoding: {messages[0]}")
    return grammar


class GrammarState:
    """One request's place in its grammar: which tokens may come next, and whether the document is complete."""

    def __init__(self, matcher) -> None:
        self.matcher = matcher  # llguidance.LLMatcher, a copy owned by this request

    def consume(self, token: int) -> bool:
        """Advance past a sampled token; False when the grammar refused it (only possible when it allowed no
        token at all, e.g. an unsatisfiable schema): the request then ends with finish_reason "error"."""
        return bool(self.matcher.consume_token(token))

    @property
    def done(self) -> bool:
        """True once the document is complete and nothing may follow (or a stop token was taken)."""
        return bool(self.matcher.is_stopped())


class Constraints:
    """The grammars of one engine: its tokenizer's table (built on first use), compiled schemas, batched masks."""

    def __init__(self, tokenizer_json: str | None, vocab_size: int, stop_ids: Iterable[int], threads: int = 0):
        """``tokenizer_json``: the text of the checkpoint's tokenizer.json (None: constraints unavailable);
        ``vocab_size``: the model's output rows (may exceed the tokenizer's); ``stop_ids``: tokens that end a
        sequence, allowed once the document is complete."""
        self._tokenizer_json = tokenizer_json
        self._vocab_size = vocab_size
        self._stop_ids = sorted(stop_ids)
        self._threads = threads or min(4, os.cpu_count() or 1)
        self._tokenizer = None
        self._executor = None
        self._templates: dict[str, object] = {}
        self._bitmask: torch.Tensor | None = None  # int32 [rows, ceil(V / 32)], grown as needed
        self.mask_seconds = 0.0  # time spent filling and applying masks: what constraints add to each step

    def _ready(self) -> None:
        if self._tokenizer is not None:
            return
        if self._tokenizer_json is None:
            raise ValueError("constrained decoding needs the checkpoint's tokenizer.json (this one has none)")
        import llguidance

        self._tokenizer = llguidance.LLTokenizer(
            self._tokenizer_json, n_vocab=self._vocab_size, eos_token=self._stop_ids
        )
        self._executor = llguidance.LLExecutor(num_threads=self._threads)

    def start(self, schema: str) -> GrammarState:
        """A fresh grammar state for one request constrained by ``schema`` (JSON text)."""
        import llguidance

        self._ready()
        template = self._templates.get(schema)
        if template is None:
            template = llguidance.LLMatcher(self._tokenizer, compile_json_schema(schema), log_level=0)
            if template.is_error():
                raise ValueError(f"the JSON schema cannot be used to constrain decoding: {template.get_error()}")
            self._templates[schema] = template
        return GrammarState(template.deep_copy())

    def mask(self, logits: torch.Tensor, states: Sequence[GrammarState | None]) -> None:
        """Set to -inf, in place, the logits [B, V] of tokens a row's grammar forbids (rows without one keep
        theirs). The masks of all constrained rows are filled in one parallel call."""
        rows = [row for row, state in enumerate(states) if state is not None]
        if not rows:
            return
        from llguidance.torch import fill_next_token_bitmask_par

        started = time.perf_counter()
        words = (self._vocab_size + 31) // 32
        if self._bitmask is None or self._bitmask.shape[0] < len(rows):
            self._bitmask = torch.empty(len(states), words, dtype=torch.int32)
        bitmask = self._bitmask[: len(rows)]  # [n, W], contiguous
        bitmask.fill_(-1)
        fill_next_token_bitmask_par(self._executor, [(states[row].matcher, n) for n, row in enumerate(rows)], bitmask)
        if logits.device.type == "cpu":
            allowed = unpack_bitmask(bitmask, logits.shape[-1])  # [n, V] bool
        else:  # ship the packed words (32x smaller) and unpack them on the device
            allowed = unpack_bitmask_on(bitmask.to(logits.device), logits.shape[-1])
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
        self.mask_seconds += time.perf_counter() - started


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 [n, W] bitmask (bit j of word w: token 32w + j allowed) -> bool [n, vocab]; tokens past the
    bitmask's 32W are forbidden."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")  # [n, 32W], little-endian words
    allowed = torch.from_numpy(bits[:, :vocab].astype(bool))
    if allowed.shape[1] < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    return allowed


def unpack_bitmask_on(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """``unpack_bitmask`` with torch ops, on the bitmask's own device (an accelerator)."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [n, W, 32]
    allowed = bits.reshape(bitmask.shape[0], -1)[:, :vocab].bool()  # [n, min(32W, vocab)]
    if allowed.shape[1] < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    return allowed
