"""How good a set of labels is against gold labels: accuracy, macro-F1, macro recall, expected calibration
error with its reliability bins, and coverage against accuracy for abstention thresholds. Pure Python, used by
the benchmarks, `make tune` and the run report of runs whose records carry gold labels (--gold_field)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Quality:
    count: int
    accuracy: float
    macro_f1: float
    macro_recall: float

    def line(self) -> str:
        scores = f"accuracy={self.accuracy:.3f} macro-F1={self.macro_f1:.3f} recall={self.macro_recall:.3f}"
        return f"n={self.count} {scores}"


def quality(gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str]) -> Quality:
    """Scores of ``predicted`` against ``gold``; a None prediction (an abstention) counts as wrong."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels for {len(predicted)} predictions")
    if not gold:
        raise ValueError("no examples to score")
    correct = sum(g == p for g, p in zip(gold, predicted, strict=True))
    f1s, recalls = [], []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        recalls.append(recall)
    return Quality(len(gold), correct / len(gold), sum(f1s) / len(f1s), sum(recalls) / len(recalls))


@dataclass(frozen=True)
class Bin:
    """One confidence bin of a reliability diagram: rows with confidence in (low, high]."""

    low: float
    high: float
    count: int
    mean_confidence: float
    accuracy: float


def reliability(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[Bin]:
    """The non-empty equal-width confidence bins with their mean confidence and accuracy: a model whose
    confidence means what it says has accuracy close to confidence in every bin."""
    if len(confidence) != len(correct):
        raise ValueError(f"{len(confidence)} confidences for {len(correct)} outcomes")
    if not confidence:
        raise ValueError("no predictions to calibrate")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, c in enumerate(confidence):
        members[_bin_of(c, bins)].append(i)
    return [
        Bin(
            b / bins,
            (b + 1) / bins,
            len(rows),
            sum(confidence[i] for i in rows) / len(rows),
            sum(correct[i] for i in rows) / len(rows),
        )
        for b, rows in enumerate(members)
        if rows
    ]


def _bin_of(confidence: float, bins: int) -> int:
    """The bin (b/bins, (b+1)/bins] holding ``confidence`` (0 goes to the first), compared exactly as written
    (0.3 * 10 is 3.0000000000000004 in floating point, yet 0.3 belongs to (0.2, 0.3])."""
    b = min(max(math.ceil(confidence * bins) - 1, 0), bins - 1)
    while b > 0 and confidence <= b / bins:
        b -= 1
    while b < bins - 1 and confidence > (b + 1) / bins:
        b += 1
    return b


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by how many rows each holds."""
    found = reliability(confidence, correct, bins)
    return sum(b.count * abs(b.accuracy - b.mean_confidence) for b in found) / len(confidence)


@dataclass(frozen=True)
class Coverage:
    """Abstaining below ``threshold``: the share of rows still answered, and how many of those are right."""

    threshold: float
    coverage: float
    answered: int
    accuracy: float | None  # None when no row is answered


def coverage_curve(confidence: Sequence[float], correct: Sequence[bool], thresholds: Sequence[float]) -> list[Coverage]:
    """Coverage against accuracy for each ``min_confidence`` threshold (a row abstains below it)."""
    if len(confidence) != len(correct):
        raise ValueError(f"{len(confidence)} confidences for {len(correct)} outcomes")
    if not confidence:
        raise ValueError("no predictions to score")
    out = []
    for threshold in thresholds:
        kept = [ok for c, ok in zip(confidence, correct, strict=True) if c >= threshold]
        accuracy = sum(kept) / len(kept) if kept else None
        out.append(Coverage(threshold, len(kept) / len(confidence), len(kept), accuracy))
    return out


def rescaled(probabilities: Sequence[float], temperature: float) -> list[float]:
    """A probability vector with its log-odds divided by ``temperature`` (temperature scaling): above 1 it is
    flattened (less sure), below 1 sharpened; the order of the labels never changes."""
    if temperature <= 0:
        raise ValueError(f"a temperature must be > 0, got {temperature}")
    logs = [math.log(max(p, 1e-300)) / temperature for p in probabilities]
    top = max(logs)
    weights = [math.exp(x - top) for x in logs]
    return [w / sum(weights) for w in weights]


TEMPERATURES = tuple(round(0.05 * 1.03**i, 6) for i in range(180))  # 0.05 to about 10, 3% apart


def fit_temperature(probabilities: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """The temperature (from ``TEMPERATURES``) under which the gold labels are most likely (least negative
    log-likelihood): the one scalar that makes confidence match accuracy best on these rows."""
    if len(probabilities) != len(gold):
        raise ValueError(f"{len(probabilities)} probability rows for {len(gold)} gold labels")
    if not gold:
        raise ValueError("no labelled rows to fit a temperature on")

    def loss(temperature: float) -> float:
        return -sum(
            math.log(max(rescaled(p, temperature)[g], 1e-300)) for p, g in zip(probabilities, gold, strict=True)
        )

    return min(TEMPERATURES, key=loss)
