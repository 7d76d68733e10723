"""One task's numbers for the run report, gathered row by row: label counts, the confidence histogram, and,
when the records carry gold labels, accuracy, macro-F1, calibration (ECE, reliability bins), coverage
against accuracy for abstention thresholds, and the confidence_temperature that would make confidence match
accuracy on these rows (``common.quality``).

Only the rows with a gold label keep their label probabilities: gold labels are for evaluation sets, which are
small; every other number is a counter.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common.quality import (
    Bin,
    Coverage,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    quality,
    reliability,
    rescaled,
)
from pipelines.run_info import CLASSIFY, TaskInfo

CONFIDENCE_BINS = 20
COVERAGE_THRESHOLDS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ABSTAINED = "(abstained)"


@dataclass(frozen=True)
class TaskQuality:
    """A classify task scored against gold labels; accuracy and F1 are of the top label of every row (an
    abstaining row included), ``coverage`` says what abstaining below each threshold keeps and how right."""

    labelled: int
    unlabelled: int  # rows whose record has no gold label
    outside_labels: int  # gold labels that are not in the task's label set (always counted wrong)
    accuracy: float
    macro_f1: float
    macro_recall: float
    ece: float
    reliability: tuple[Bin, ...]
    coverage: tuple[Coverage, ...]
    # The confidence_temperature under which these gold labels are likeliest (the run's own times the one
    # fitted to its probabilities), and the ECE it gives on the same rows: optimistic, to be checked on
    # another labelled set.
    fitted_temperature: float | None
    fitted_ece: float | None

    def at(self, threshold: float) -> Coverage | None:
        return next((c for c in self.coverage if c.threshold == threshold), None)


@dataclass(frozen=True)
class TaskFigures:
    info: TaskInfo
    rows: int
    label_counts: dict[str, int]  # classify: rows per label (multi-label: per label that applies)
    confidence_histogram: tuple[int, ...]  # classify: rows per confidence bin of width 1/CONFIDENCE_BINS
    mean_confidence: float | None
    finish_reasons: dict[str, int]  # generate
    quality: TaskQuality | None


def _scores(value: Any) -> dict[str, float]:
    """A row's label_scores (a map, or the (key, value) pairs Parquet reads it as)."""
    return dict(value.items() if isinstance(value, dict) else value)


@dataclass
class TaskTally:
    """Adds up one task's columns over the rows (mutable; ``figures()`` freezes the result)."""

    info: TaskInfo
    rows: int = 0
    labels: Counter = field(default_factory=Counter)
    histogram: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    confidence_sum: float = 0.0
    finish_reasons: Counter = field(default_factory=Counter)
    gold: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    probabilities: list[list[float]] = field(default_factory=list)  # in label order, per gold row
    unlabelled: int = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        column = self.info.column
        if self.info.kind != CLASSIFY:
            self.finish_reasons[row.get(column("finish_reason")) or "?"] += 1
            return
        confidence = float(row[column("confidence")])
        self.confidence_sum += confidence
        self.histogram[min(int(confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1
        if self.info.multi_label:
            self.labels.update(row.get(column("labels")) or [ABSTAINED])
            return
        self.labels[row.get(column("label")) or ABSTAINED] += 1
        if self.info.gold_field:
            self._add_gold(row, confidence)

    def _add_gold(self, row: dict[str, Any], confidence: float) -> None:
        gold = json.loads(row.get("extra") or "{}").get(self.info.gold_field)
        if gold is None or str(gold).strip() == "":
            self.unlabelled += 1
            return
        by_folded = {label.casefold(): label for label in self.info.labels}
        text = str(gold).strip()
        scores = _scores(row[self.info.column("label_scores")])
        self.gold.append(by_folded.get(text.casefold(), text))
        self.predicted.append(max(scores, key=scores.__getitem__))
        self.confidence.append(confidence)
        self.probabilities.append([scores[label] for label in self.info.labels])

    def figures(self) -> TaskFigures:
        classify = self.info.kind == CLASSIFY
        return TaskFigures(
            info=self.info,
            rows=self.rows,
            label_counts=dict(self.labels.most_common()),
            confidence_histogram=tuple(self.histogram) if classify else (),
            mean_confidence=self.confidence_sum / self.rows if classify and self.rows else None,
            finish_reasons=dict(self.finish_reasons.most_common()),
            quality=self._quality(),
        )

    def _quality(self) -> TaskQuality | None:
        if not self.gold:
            return None
        correct = [g == p for g, p in zip(self.gold, self.predicted, strict=True)]
        scores = quality(self.gold, self.predicted, self.info.labels)
        thresholds = set(COVERAGE_THRESHOLDS)
        if self.info.min_confidence is not None:
            thresholds.add(self.info.min_confidence)
        return TaskQuality(
            labelled=len(self.gold),
            unlabelled=self.unlabelled,
            outside_labels=sum(1 for g in self.gold if g not in self.info.labels),
            accuracy=scores.accuracy,
            macro_f1=scores.macro_f1,
            macro_recall=scores.macro_recall,
            ece=expected_calibration_error(self.confidence, correct),
            reliability=tuple(reliability(self.confidence, correct)),
            coverage=tuple(coverage_curve(self.confidence, correct, sorted(thresholds))),
            **self._fitted(),
        )

    def _fitted(self) -> dict[str, float | None]:
        """The temperature fitted on the rows whose gold label is in the label set, and its ECE there."""
        index = {label: i for i, label in enumerate(self.info.labels)}
        known = [(p, index[g]) for p, g in zip(self.probabilities, self.gold, strict=True) if g in index]
        if not known:
            return {"fitted_temperature": None, "fitted_ece": None}
        temperature = fit_temperature([p for p, _ in known], [g for _, g in known])
        scaled = [rescaled(p, temperature) for p, _ in known]
        confidence = [max(p) for p in scaled]
        correct = [p.index(max(p)) == g for p, (_, g) in zip(scaled, known, strict=True)]
        return {
            "fitted_temperature": temperature * self.info.confidence_temperature,
            "fitted_ece": expected_calibration_error(confidence, correct),
        }
