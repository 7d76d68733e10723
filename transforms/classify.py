"""classify: the model scores every label, the row gets the best one (or, multi-label, every label judged yes/no).

The label is always one of the label set, whatever the record says: the model is never asked to write the
label, only to score each one. Scores are calibrated by dividing out the model's prior for each label (its
probabilities after a content-free input such as "N/A"), which removes a base model's habit of preferring
some label words regardless of the text. ``confidence_temperature`` rescales the probabilities so that
confidence matches accuracy (temperature scaling; the run report fits it on records with gold labels). Below
``min_confidence`` a row abstains: no label, ``abstained``. With ``explain`` a single-label task adds
``evidence``: the words its decision rests on (``transforms.evidence``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from inference.requests import Answer, Piece, Question
from transforms.evidence import EVIDENCE_TYPE, MAX_TOP_K, Explain, Span, top_evidence
from transforms.examples import Example, load_examples
from transforms.prompting import CHAT, DELIMITER, record_block
from transforms.task import Task
from transforms.taskfile import TaskFileError, where

DEFAULT_CALIBRATION = ("N/A", "", "[text]")
DEFAULT_INSTRUCTIONS = "Classify each text into exactly one of these categories: {labels}."
DEFAULT_MULTI_INSTRUCTIONS = "Say which of these categories apply to each text: {labels}."
DEFAULT_LABEL_QUESTION = "Is it about {label}?"
YES_NO = ("yes", "no")


def parse_labels(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a, b,c"`` or a sequence -> a tuple of distinct non-empty labels; errors say what to pass."""
    items = value.split(",") if isinstance(value, str) else list(value)
    labels = tuple(item.strip() for item in items if item.strip())
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, e.g. --labels billing,shipping,other; got {value!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels!r}")
    return labels


def label_probabilities(
    logprobs: Sequence[float], prior: Sequence[float] | None, temperature: float = 1.0
) -> list[float]:
    """Softmax over the labels of (log P(label | text) - log P(label | content-free)) / temperature, or of the
    raw scores without a prior."""
    if prior is not None and len(prior) != len(logprobs):
        raise ValueError(f"{len(prior)} prior scores for {len(logprobs)} labels")
    adjusted = [(lp - (prior[i] if prior is not None else 0.0)) / temperature for i, lp in enumerate(logprobs)]
    if not adjusted or not all(math.isfinite(x) for x in adjusted):
        raise ValueError(f"label scores must be finite numbers, got {list(logprobs)!r}")
    top = max(adjusted)
    weights = [math.exp(x - top) for x in adjusted]
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True)
class Label:
    name: str  # what the row says
    word: str  # what the model scores (a base model answers "none" far more readily than "neutral")
    description: str = ""  # goes into the prompt


LABEL_KEYS = ("name", "description", "word")


def parse_explain(value: Any, place: str, multi_label: bool) -> Explain | None:
    """A task file's ``explain:``: true, false, or {top_k: N}; single-label tasks only."""
    if value is False or value is None:
        return None
    if multi_label:
        raise TaskFileError(
            f"{place}: explain works on single-label tasks (one chosen label to explain); remove it or "
            "multi_label: true"
        )
    if value is True:
        return Explain()
    top_k = value.get("top_k") if isinstance(value, dict) else None
    if set(value) - {"top_k"} or not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise TaskFileError(
            f"{place}: expected true, false or {{top_k: N}} with N from 1 to {MAX_TOP_K}, got {value!r}"
        )
    return Explain(top_k)


def parse_label_entries(raw: list[Any], place: str) -> tuple[Label, ...]:
    """A task file's labels: bare names or {name, description, word}; at least two, names and words distinct."""
    labels = []
    for n, item in enumerate(raw, start=1):
        entry = {"name": item} if isinstance(item, (str, int)) and not isinstance(item, bool) else item
        if not isinstance(entry, dict) or set(entry) - set(LABEL_KEYS):
            raise TaskFileError(f"{place}: label {n}: expected a name or {{name: ..., description: ...}}, got {item!r}")
        name = str(entry.get("name", "")).strip()
        word = str(entry.get("word", name)).strip()
        description = entry.get("description", "")
        if not name or not word or not isinstance(description, str):
            raise TaskFileError(f"{place}: label {n}: needs a name (and a text description, if any), got {item!r}")
        labels.append(Label(name, word, " ".join(description.split())))
    if len(labels) < 2:
        raise TaskFileError(f"{place}: needs at least two labels, e.g. labels: [billing, shipping, other]")
    for attribute in ("name", "word"):
        values = [getattr(label, attribute) for label in labels]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise TaskFileError(f"{place}: labels must have distinct {attribute}s; repeated: {', '.join(repeated)}")
    return tuple(labels)


class ClassifyTask(Task):
    """Columns: label (or labels), confidence, label_scores, abstained when min_confidence is set, and
    evidence with explain."""

    explain: Explain | None = None
    confidence_temperature: float = 1.0

    def __init__(
        self,
        name: str,
        labels: tuple[Label, ...],
        *,
        instructions: str = DEFAULT_INSTRUCTIONS,
        question: str | None = None,
        examples: tuple[Example, ...] = (),
        multi_label: bool = False,
        threshold: float = 0.5,
        label_question: str = DEFAULT_LABEL_QUESTION,
        min_confidence: float | None = None,
        calibrate: bool = True,
        explain: Explain | None = None,
        confidence_temperature: float = 1.0,
    ) -> None:
        self.name = name
        self.labels = labels
        self.instructions = instructions.replace("{labels}", ", ".join(label.name for label in labels))
        self.question = question or name.replace("_", " ").capitalize() + ":"
        self.examples = examples
        self.multi_label = multi_label
        self.threshold = threshold
        self.label_question = label_question
        self.min_confidence = min_confidence
        self.calibration = DEFAULT_CALIBRATION if calibrate else ()
        if explain is not None:
            if multi_label:
                raise ValueError("explain works on single-label tasks")
            self.explain = explain  # set only when on: a task without it keeps its fingerprint (result_key)
        if confidence_temperature <= 0:
            raise ValueError(f"confidence_temperature must be > 0, got {confidence_temperature}")
        if confidence_temperature != 1.0:  # likewise: only a changed scale changes the fingerprint
            self.confidence_temperature = float(confidence_temperature)

    @property
    def explains(self) -> bool:
        return self.explain is not None

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any], source: str, read: Callable[[str], bytes]) -> ClassifyTask:
        name = raw["name"]
        labels = parse_label_entries(raw["labels"], where(source, name, "labels"))
        multi = raw.get("multi_label", False)
        examples: tuple[Example, ...] = ()
        if "examples" in raw:
            place = where(source, name, "examples")
            examples = load_examples(raw["examples"], place, "labels" if multi else "label", multi, read)
            known = {label.name for label in labels}
            for example in examples:
                unknown = sorted(set(example.answer if multi else (example.answer,)) - known)
                if unknown:
                    raise TaskFileError(
                        f"{place}: example {example.text[:40]!r} has label {', '.join(unknown)}, not one of "
                        f"{', '.join(sorted(known))}; fix the example or add the label"
                    )
        default = DEFAULT_MULTI_INSTRUCTIONS if multi else DEFAULT_INSTRUCTIONS
        return cls(
            name,
            labels,
            instructions=raw.get("instructions", default),
            question=raw.get("question"),
            examples=examples,
            multi_label=multi,
            threshold=raw.get("threshold", 0.5),
            label_question=raw.get("label_question", DEFAULT_LABEL_QUESTION),
            min_confidence=raw.get("min_confidence"),
            calibrate=raw.get("calibrate", True),
            explain=parse_explain(raw.get("explain"), where(source, name, "explain"), multi),
            confidence_temperature=raw.get("confidence_temperature", 1.0),
        )

    # -- prompt

    def _label_line(self, label: Label) -> str:
        return self.label_question.replace("{label}", label.word)

    def section(self, style: str, input_label: str) -> str:
        words = ", ".join(label.word for label in self.labels)
        text = self.instructions
        if style == CHAT:
            text += " Answer yes or no." if self.multi_label else f" Answer with one of: {words}."
        parts = [text + "\n\n"] if text else []
        if any(label.description for label in self.labels):
            lines = [
                f"- {label.word}: {label.description}" if label.description else f"- {label.word}"
                for label in self.labels
            ]
            parts.append("Labels:\n" + "\n".join(lines) + "\n\n")
        for example in self.examples:
            parts.append(record_block(input_label, example.text) + self._answered(example) + "\n")
        return "".join(parts)

    def _answered(self, example: Example) -> str:
        """The lines that answer an example the way the model is asked to answer a record."""
        by_name = {label.name: label for label in self.labels}
        if not self.multi_label:
            return f"{self.question} {by_name[example.answer].word}\n"
        return "".join(
            f"{self._label_line(label)} {'yes' if label.name in example.answer else 'no'}\n" for label in self.labels
        )

    def tails(self, style: str) -> tuple[tuple[Piece, ...], ...]:
        if not self.multi_label:
            return ((f"{DELIMITER}\n{self.question}",),)
        return tuple((f"{DELIMITER}\n{self._label_line(label)}",) for label in self.labels)

    def questions(self) -> tuple[Question, ...]:
        if not self.multi_label:
            words = tuple(label.word for label in self.labels)
            return (Question(words=words, calibration=self.calibration, explain=self.explains),)
        return tuple(Question(words=YES_NO, calibration=self.calibration) for _ in self.labels)

    # -- columns

    def columns(self, answers: tuple[Answer, ...]) -> dict[str, Any]:
        names = [label.name for label in self.labels]
        if self.multi_label:
            yes = [label_probabilities(a.logprobs, a.prior, self.confidence_temperature)[0] for a in answers]
            chosen: Any = [name for name, p in zip(names, yes, strict=True) if p >= self.threshold]
            confidence = min(max(p, 1.0 - p) for p in yes)  # how sure the least sure decision is
            scores = yes
        else:
            (answer,) = answers
            if len(answer.logprobs) != len(names):
                raise ValueError(f"{len(answer.logprobs)} scores for {len(names)} labels")
            scores = label_probabilities(answer.logprobs, answer.prior, self.confidence_temperature)
            best = max(range(len(scores)), key=scores.__getitem__)
            chosen, confidence = names[best], scores[best]
        columns = {
            "labels" if self.multi_label else "label": chosen,
            "confidence": confidence,
            "label_scores": dict(zip(names, scores, strict=True)),
        }
        if self.min_confidence is not None:
            abstained = confidence < self.min_confidence
            columns["abstained"] = abstained
            if abstained:
                columns["labels" if self.multi_label else "label"] = None
        return columns

    def evidence(self, answers: tuple[Answer, ...], spans: tuple[Span, ...]) -> list[dict[str, Any]]:
        """The spans whose removal most lowers the top label's calibrated probability (the chosen label, or
        the one the row abstained on), with their drops; [] for a record too short to leave a span out."""
        (answer,) = answers
        if self.explain is None or not spans:
            return []
        if len(answer.variants) != len(spans):
            raise ValueError(f"{len(answer.variants)} variant scores for {len(spans)} spans of the text")
        scale = self.confidence_temperature
        scores = label_probabilities(answer.logprobs, answer.prior, scale)
        best = max(range(len(scores)), key=scores.__getitem__)
        without = [label_probabilities(row, answer.prior, scale)[best] for row in answer.variants]
        return top_evidence(spans, scores[best], without, self.explain.top_k)

    def fields(self) -> list[pa.Field]:
        abstains = self.min_confidence is not None
        label_type = pa.list_(pa.string()) if self.multi_label else pa.string()
        fields = [
            pa.field("labels" if self.multi_label else "label", label_type, nullable=abstains),
            pa.field("confidence", pa.float64(), nullable=False),
            pa.field("label_scores", pa.map_(pa.string(), pa.float64()), nullable=False),
        ]
        if abstains:
            fields.append(pa.field("abstained", pa.bool_(), nullable=False))
        if self.explains:
            fields.append(pa.field("evidence", EVIDENCE_TYPE, nullable=False))
        return fields
