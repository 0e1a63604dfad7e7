"""covidseg.stats.calibration against hand-computed values and scikit-learn-free identities."""

from __future__ import annotations

import numpy as np
import pytest

from covidseg.stats.calibration import brier_score, expected_calibration_error, reliability_curve


def test_brier_score_by_hand():
    # (0.9-1)^2 + (0.2-0)^2 + (0.6-0)^2 + (0.7-1)^2 = 0.01 + 0.04 + 0.36 + 0.09 = 0.50 -> mean 0.125
    assert brier_score([1, 0, 0, 1], [0.9, 0.2, 0.6, 0.7]) == pytest.approx(0.125)
    assert brier_score([0, 1], [0.5, 0.5]) == pytest.approx(0.25)


def test_reliability_curve_bins_and_edges():
    targets = [0, 0, 1, 1, 1]
    probs = [0.05, 0.1, 0.1, 0.95, 1.0]  # 0.1 is an inner edge: upper bin; 1.0 in the last bin
    curve = reliability_curve(targets, probs, n_bins=10)
    assert list(curve["bin_low"]) == pytest.approx([0.0, 0.1, 0.9])
    assert list(curve["n"]) == [1, 2, 2]
    assert list(curve["observed"]) == pytest.approx([0.0, 0.5, 1.0])
    assert list(curve["mean_predicted"]) == pytest.approx([0.05, 0.1, 0.975])


def test_ece_by_hand_and_perfect_calibration():
    # bins: [0,0.5): p=0.2 (y 0,1) gap |0.2-0.5|=0.3 w 0.5; [0.5,1]: p=0.8 (y 1,1) gap 0.2 w 0.5 -> 0.25
    assert expected_calibration_error([0, 1, 1, 1], [0.2, 0.2, 0.8, 0.8], n_bins=2) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = rng.uniform(size=p.size) < p  # outcomes drawn at the stated probability: calibrated
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p + 0.3, 0, 1)) > 0.2


@pytest.mark.parametrize(
    ("targets", "probs", "message"),
    [
        ([0, 1], [0.5], "differ in length"),
        ([], [], "no predictions"),
        ([0, 2], [0.1, 0.2], "binary targets"),
        ([0, 1], [0.1, float("nan")], "lie in"),
        ([0, 1], [0.1, 1.2], "lie in"),
    ],
)
def test_bad_input_is_refused(targets, probs, message):
    with pytest.raises(ValueError, match=message):
        brier_score(targets, probs)
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(targets, probs)
