"""How good a set of labels is against gold labels: accuracy, macro-F1, macro recall and expected calibration
error. Pure Python, used by the benchmarks, `make tune` and runs that carry gold labels."""

from __future__ import annotations

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


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by how many rows each holds."""
    if len(confidence) != len(correct):
        raise ValueError(f"{len(confidence)} confidences for {len(correct)} outcomes")
    if not confidence:
        raise ValueError("no predictions to calibrate")
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if low < c <= high or (b == 0 and c == 0.0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            total += len(members) * abs(accuracy - mean_confidence)
    return total / len(confidence)
