"""Accuracy, macro-F1, macro recall and calibration error on hand-computed cases."""

from __future__ import annotations

import pytest

from common.quality import expected_calibration_error, quality


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
