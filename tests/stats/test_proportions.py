"""Wilson intervals (scipy) against Newcombe's published examples, and the counts behind a proportion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidseg import stats
from covidseg.stats.binary import proportion_counts, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    # Newcombe, Statistics in Medicine 17 (1998), table I, method 3 (score interval without correction)
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombe(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_at_100_percent_and_without_trials():
    low, high = wilson_interval(21, 21)
    assert high == 1.0 and low == pytest.approx(21 / (21 + 1.959964**2))  # closed form at k = n
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_proportion_counts_are_the_metrics_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.5])  # 0.5 is not above the threshold 0.5: negative
    assert proportion_counts("recall", y, p) == (2, 3) and proportion_counts("specificity", y, p) == (3, 4)
    assert proportion_counts("precision", y, p) == (2, 3) and proportion_counts("acc", y, p) == (5, 7)
    assert proportion_counts("recall", y, p, threshold=0.1) == (3, 3)
    for name in ("acc", "precision", "recall", "specificity"):
        k, n = proportion_counts(name, y, p)
        assert k / n == pytest.approx(stats.BINARY_METRICS[name](y, p))
    with pytest.raises(ValueError, match="not a proportion"):
        proportion_counts("f1", y, p)
