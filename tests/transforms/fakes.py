"""A deterministic fake of the GemmaEngine interface, for tests that exercise Beam code without a model.

Scores depend only on the document (the text between the prompt's last pair of triple quotes), so expected
rows can be computed by hand: each label scores (number of times the label's cue words appear) - 5, and the
content-free calibration prompts ("N/A", "", "[text]") score every label equally. A yes/no question about a
label (multi-label tasks: "Is it about billing?") scores yes = (times the label appears) - 5 and no = -4.5.
"""

from __future__ import annotations

from collections.abc import Sequence

from gemma_ops.outputs import Completion, ScoreResult
from gemma_ops.sampling import SamplingParams

CUES = {
    "positive": ("great", "love", "excellent"),
    "negative": ("broken", "awful", "refund"),
    "neutral": ("address", "hours"),
    "none": ("address", "hours"),  # the word sentiment scores for its neutral label
}
POISON = "POISON"  # a prompt containing this gets an engine error (finish_reason "error")


class FakeTokenizer:
    """One token per character (plus BOS = 2): simple and exact for truncation tests."""

    def __init__(self, chat: bool = False) -> None:
        self.has_chat_template = chat

    def encode(self, text: str, add_bos: bool = True, allow_special: bool = True) -> list[int]:
        return ([2] if add_bos else []) + [ord(c) + 10 for c in text]

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, allow_special: bool = True) -> list[list[int]]:
        return [self.encode(t, add_bos, allow_special) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 10) for i in ids if i >= 10)

    def chat_prompt(self, user_text: str) -> str:
        return f"<start_of_turn>user\n{user_text}<end_of_turn>\n<start_of_turn>model\n"


class FakeEngine:
    def __init__(self, max_context: int = 4096, chat: bool = False) -> None:
        self.tokenizer = FakeTokenizer(chat)
        self.max_context = max_context
        self.model_name = "fake-gemma"
        self.score_calls: list[int] = []  # batch sizes seen
        self.shared_prefixes: list[tuple[int, ...] | None] = []  # the shared_prefix of each score call
        self.generate_calls: list[int] = []
        self.branch_calls: list[int] = []  # trees per branch call

    def _text(self, prompt: str | Sequence[int]) -> str:
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)

    @staticmethod
    def _document(text: str) -> str:
        parts = text.split('"""')
        return parts[-2] if len(parts) >= 3 else text

    def score(self, prompts, candidates, *, restrict_vocab: bool = False, shared_prefix=None) -> list[ScoreResult]:
        self.score_calls.append(len(prompts))
        self.shared_prefixes.append(None if shared_prefix is None else tuple(shared_prefix))
        out = []
        for prompt in prompts:
            ids = prompt if not isinstance(prompt, str) else self.tokenizer.encode(prompt)
            text = self._document(self._text(prompt)).lower()
            if POISON.lower() in text:
                out.append(ScoreResult((), len(ids), "fake engine refused this prompt"))
                continue
            out.append(ScoreResult(self._scores(text, self._text(prompt), candidates), len(ids)))
        return out

    @staticmethod
    def _scores(document: str, prompt: str, candidates) -> tuple[float, ...]:
        words = [c.strip().lower() for c in candidates]
        if words == ["yes", "no"]:
            label = prompt.rsplit('"""', 1)[-1].split("?")[0].split()[-1].lower()
            return (float(document.count(label)) - 5.0, -4.5)
        return tuple(float(sum(document.count(c) for c in CUES.get(w, (w,)))) - 5.0 for w in words)

    def branch(self, trees, *, shared_prefix=None, restrict_vocab: bool = True) -> list[list]:
        """Each branch asked on its own (trunk + tail), with the same answers score/generate give."""
        self.branch_calls.append(len(trees))
        out = []
        for tree in trees:
            row = []
            for branch in tree.branches:
                prompt = list(tree.trunk + branch.tail)
                if branch.params is None:
                    words = [self.tokenizer.decode(ids) for ids in branch.candidates]
                    row.append(self.score([prompt], words, shared_prefix=shared_prefix)[0])
                else:
                    row.append(self.generate([prompt], branch.params)[0])
            out.append(row)
        return out

    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams]) -> list[Completion]:
        self.generate_calls.append(len(prompts))
        per = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        out = []
        for prompt, p in zip(prompts, per, strict=True):
            ids = prompt if not isinstance(prompt, str) else self.tokenizer.encode(prompt)
            text = self._text(prompt)
            if POISON in text:
                out.append(Completion("", (), "error", len(ids), "fake engine refused this prompt"))
                continue
            # "Summarize" as the document's first three words, echoing a "Summary:" prefix like a base model.
            words = self._document(text).split()[:3]
            body = " Summary: " + " ".join(words) + "<end_of_turn>"
            tokens = tuple(range(min(len(words) + 1, p.max_new_tokens)))
            reason = "length" if len(words) + 1 > p.max_new_tokens else "stop"
            out.append(Completion(body, tokens, reason, len(ids)))
        return out


def fake_engine_factory(path, **kwargs) -> FakeEngine:
    return FakeEngine(**{k: v for k, v in kwargs.items() if k in ("max_context", "chat")})


def fake_resolver(model: str):
    from pathlib import Path

    return Path(f"/nonexistent/{model}")
