"""Label-scoring tasks (sentiment, classify): the model scores every label, the row gets the best one.

The label is always one of the label set, whatever the record says: the model is never asked to write
the label, only to score each one. Scores are calibrated by dividing out the model's prior for each label
(its probabilities after a content-free input such as "N/A"), which removes a base model's habit of
preferring some label words regardless of the text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from common.records import Record
from inference.requests import PromptTemplate, Response, ScoreRequest, ScoreResponse
from transforms.task import Task
from transforms.text import prompt_safe

DEFAULT_CALIBRATION_DOCUMENTS = ("N/A", "", "[text]")


def parse_labels(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a, b,c"`` or a sequence -> a tuple of distinct non-empty labels; errors say what to pass."""
    items = value.split(",") if isinstance(value, str) else list(value)
    labels = tuple(item.strip() for item in items if item.strip())
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, e.g. --labels billing,shipping,other; got {value!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels!r}")
    return labels


def label_probabilities(logprobs: Sequence[float], prior: Sequence[float] | None) -> list[float]:
    """Softmax over the labels of log P(label | text) - log P(label | content-free), or of the raw scores."""
    if prior is not None and len(prior) != len(logprobs):
        raise ValueError(f"{len(prior)} prior scores for {len(logprobs)} labels")
    adjusted = [lp - (prior[i] if prior is not None else 0.0) for i, lp in enumerate(logprobs)]
    if not adjusted or not all(math.isfinite(x) for x in adjusted):
        raise ValueError(f"label scores must be finite numbers, got {list(logprobs)!r}")
    top = max(adjusted)
    weights = [math.exp(x - top) for x in adjusted]
    total = sum(weights)
    return [w / total for w in weights]


class ScoringTask(Task):
    """Pick one of ``labels`` by scoring; columns: label, confidence, label_scores."""

    def __init__(
        self,
        name: str,
        labels: Sequence[str],
        template: PromptTemplate,
        calibrate: bool = True,
        words: Sequence[str] = (),
    ):
        self.name = name
        self.labels = parse_labels(labels)
        self.words = tuple(words)
        self.template = template
        self.calibration_documents = DEFAULT_CALIBRATION_DOCUMENTS if calibrate else ()

    def build_request(self, record: Record) -> ScoreRequest:
        return ScoreRequest(
            document=prompt_safe(record.text),
            template=self.template,
            labels=self.labels,
            calibration_documents=self.calibration_documents,
            words=self.words,
        )

    def task_columns(self, response: Response) -> dict[str, Any]:
        if not isinstance(response, ScoreResponse):
            raise TypeError(f"{self.name} expects a ScoreResponse, got {type(response).__name__}")
        if len(response.logprobs) != len(self.labels):
            raise ValueError(f"{len(response.logprobs)} scores for {len(self.labels)} labels")
        probs = label_probabilities(response.logprobs, response.prior)
        best = max(range(len(probs)), key=probs.__getitem__)
        return {
            "label": self.labels[best],
            "confidence": probs[best],
            "label_scores": dict(zip(self.labels, probs, strict=True)),
        }

    def task_fields(self) -> list[pa.Field]:
        return [
            pa.field("label", pa.string(), nullable=False),
            pa.field("confidence", pa.float64(), nullable=False),
            pa.field("label_scores", pa.map_(pa.string(), pa.float64()), nullable=False),
        ]
