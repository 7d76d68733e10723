"""Accuracy, macro-F1, macro recall and calibration error on hand-computed cases."""

from __future__ import annotations

import pytest

from common.quality import (
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    quality,
    reliability,
    rescaled,
)


def test_quality_by_hand():
    gold = ["a", "a", "b", "b", "c"]
    predicted = ["a", "b", "b", "b", None]  # the abstention counts as wrong
    result = quality(gold, predicted, ["a", "b", "c"])
    assert result.count == 5 and result.accuracy == pytest.approx(3 / 5)
    # a: P=1, R=1/2 -> F1 2/3; b: P=2/3, R=1 -> F1 0.8; c: F1 0
    assert result.macro_f1 == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert result.macro_recall == pytest.approx((0.5 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="2 gold labels for 1 predictions"):
        quality(["a", "b"], ["a"], ["a", "b"])


def test_expected_calibration_error_by_hand():
    # bin (0.8, 0.9]: confidences 0.85, 0.85, outcomes right, wrong -> |0.5 - 0.85| = 0.35 over 2 rows
    # bin (0.9, 1.0]: confidence 0.95, right -> |1 - 0.95| = 0.05 over 1 row
    assert expected_calibration_error([0.85, 0.85, 0.95], [True, False, True]) == pytest.approx((2 * 0.35 + 0.05) / 3)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0


def test_reliability_bins_by_hand():
    bins = reliability([0.05, 0.85, 0.85, 0.95, 0.9], [False, True, False, True, True])
    assert [(b.low, b.high, b.count) for b in bins] == [
        (0.0, pytest.approx(0.1), 1),
        (pytest.approx(0.8), pytest.approx(0.9), 3),  # 0.9 is in (0.8, 0.9]
        (pytest.approx(0.9), 1.0, 1),
    ]
    assert bins[1].mean_confidence == pytest.approx(2.6 / 3) and bins[1].accuracy == pytest.approx(2 / 3)
    assert reliability([0.0], [True])[0].low == 0.0  # zero confidence lands in the first bin


def test_coverage_curve_by_hand():
    confidence = [0.4, 0.6, 0.7, 0.9]
    correct = [False, False, True, True]
    curve = coverage_curve(confidence, correct, [0.0, 0.6, 0.95])
    assert [(c.threshold, c.coverage, c.answered, c.accuracy) for c in curve] == [
        (0.0, 1.0, 4, 0.5),
        (0.6, 0.75, 3, pytest.approx(2 / 3)),
        (0.95, 0.0, 0, None),
    ]


def test_bin_edges_are_exact():
    values = [i / 10 for i in range(11)] + [0.30000000000000004, 0.7000000000000001]
    got = [(b.low, b.count) for b in reliability(values, [True] * len(values))]
    # 0.3 and 0.7 at their bins' top edges; the values just above them in the next bins up
    assert got == [(0.0, 2), (0.1, 1), (0.2, 1), (0.3, 2), (0.4, 1), (0.5, 1), (0.6, 1), (0.7, 2), (0.8, 1), (0.9, 1)]


def test_rescaled_sharpens_below_one_and_flattens_above():
    assert rescaled([0.5, 0.25, 0.25], 1.0) == pytest.approx([0.5, 0.25, 0.25])
    assert rescaled([0.5, 0.25, 0.25], 0.5) == pytest.approx([4 / 6, 1 / 6, 1 / 6])  # squared, renormalized
    assert rescaled([0.9, 0.1], 1e9) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="must be > 0"):
        rescaled([0.5, 0.5], 0)


def test_fit_temperature_finds_the_scale_that_matches_accuracy():
    # Every row says 0.6 for its top label and the top label is right 80% of the time: underconfident.
    rows = [[0.6, 0.2, 0.2]] * 10
    gold = [0] * 8 + [1, 2]
    temperature = fit_temperature(rows, gold)
    assert rescaled(rows[0], temperature)[0] == pytest.approx(0.8, abs=0.01)  # where NLL is least: p = accuracy
    assert temperature < 1
    with pytest.raises(ValueError, match="no labelled rows"):
        fit_temperature([], [])
