"""One task's numbers for the run report, gathered row by row: label counts, the confidence histogram, and,
when the records carry gold labels, accuracy, macro-F1, calibration (ECE, reliability bins) and coverage
against accuracy for abstention thresholds (``common.quality``).

Only the rows with a gold label keep a (gold, label, confidence) triple each: gold labels are for evaluation
sets, which are small; every other number is a counter.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common.quality import Bin, Coverage, coverage_curve, expected_calibration_error, quality, reliability
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


def _top_label(scores: Any) -> str:
    """The best label of a row's label_scores (a map, or the (key, value) pairs Parquet reads it as)."""
    items = scores.items() if isinstance(scores, dict) else scores
    return max(items, key=lambda item: item[1])[0]


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
        self.gold.append(by_folded.get(text.casefold(), text))
        self.predicted.append(_top_label(row[self.info.column("label_scores")]))
        self.confidence.append(confidence)

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
        )
