"""covidseg.stats.delong against the O(m x n) definition of DeLong's structural components, a published
example and the test's size under the null hypothesis."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from covidseg import stats
from covidseg.stats.delong import delong_covariance, delong_pooled_difference, delong_test


def brute_force_components(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V10 (per positive) and V01 (per negative) from the psi matrix of every (positive, negative) pair."""
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def tiny_example(seed: int = 0, n: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(5), np.zeros(n - 5)].astype(int)
    # One decimal: ties within and across classes, which the mid-ranks must count one half.
    a = np.round(np.clip(0.4 * y + rng.uniform(0, 0.7, n), 0, 1), 1)
    b = np.round(np.clip(0.2 * y + rng.uniform(0, 0.8, n), 0, 1), 1)
    return y, a, b


def test_single_auroc_variance_equals_the_brute_force_structural_components():
    y, a, _ = tiny_example()
    v10, v01 = brute_force_components(y, a)
    expected = np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01)
    aurocs, cov = delong_covariance(y, a)
    assert aurocs[0] == pytest.approx(stats.auroc(y, a)) and aurocs[0] == pytest.approx(v10.mean())
    assert cov.shape == (1, 1) and cov[0, 0] == pytest.approx(expected)


def test_paired_difference_equals_the_brute_force_covariance():
    y, a, b = tiny_example(seed=3)
    (a10, a01), (b10, b01) = brute_force_components(y, a), brute_force_components(y, b)
    m, n = len(a10), len(a01)

    def cov(u, v):
        return np.cov(u, v)[0, 1]

    variance = (cov(a10, a10) + cov(b10, b10) - 2 * cov(a10, b10)) / m + (
        cov(a01, a01) + cov(b01, b01) - 2 * cov(a01, b01)
    ) / n
    result = delong_test(y, a, b)
    diff = b10.mean() - a10.mean()
    assert result["difference"] == pytest.approx(diff) and result["se"] == pytest.approx(math.sqrt(variance))
    assert result["p_value"] == pytest.approx(2 * sps.norm.sf(abs(diff) / math.sqrt(variance)))
    half = 1.959964 * math.sqrt(variance)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((diff - half, diff + half), rel=1e-5)
    assert (result["n_positive"], result["n_negative"]) == (5, 8)
    # b against a is a against b mirrored
    mirrored = delong_test(y, b, a)
    assert mirrored["difference"] == pytest.approx(-diff) and mirrored["p_value"] == pytest.approx(
        result["p_value"]
    )


def test_hanley_mcneil_ct_ratings():
    """Hanley & McNeil (Radiology 1982), table 1: 109 CT images rated 1-5; published AUROC 0.893 and standard
    error 0.032 (their approximation of the same variance that DeLong estimates without assumptions)."""
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    y = np.r_[np.zeros(sum(normal)), np.ones(sum(abnormal))]
    ratings = np.r_[np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)]
    aurocs, cov = delong_covariance(y, ratings)
    assert round(float(aurocs[0]), 3) == 0.893
    assert math.sqrt(cov[0, 0]) == pytest.approx(0.032, abs=0.003)


def test_identical_models_and_the_size_of_the_test_under_the_null():
    y, a, _ = tiny_example()
    same = delong_test(y, a, a)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["se"] == 0
    # 400 pairs of models of equal skill on one set of 80 images (one covariance of all 800 at once): about
    # 5 % of the paired tests reject at 0.05.
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(30), np.zeros(50)].astype(int)
    aurocs, cov = delong_covariance(y, y + rng.normal(0, 1, (800, 80)))
    a, b = np.arange(0, 800, 2), np.arange(1, 800, 2)
    z = (aurocs[b] - aurocs[a]) / np.sqrt(cov[a, a] + cov[b, b] - 2 * cov[a, b])
    assert 0.02 < np.mean(2 * sps.norm.sf(np.abs(z)) < 0.05) < 0.09


def frames(y: np.ndarray, prob: np.ndarray, prefix: str = "") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"{prefix}{i}.png" for i in range(len(y))],
            "patient_id": [f"{prefix}p{i}" for i in range(len(y))],
            "target": y,
            "prob_normal": 1 - prob,
            "prob_covid": prob,
        }
    )


def test_pooled_difference_over_runs_on_one_set_and_over_splits():
    y, a, b = tiny_example(seed=3)
    _, c, d = tiny_example(seed=4)
    one = delong_pooled_difference([(frames(y, a), frames(y, b))])
    single = delong_test(y, a, b)
    assert one["observed"] == pytest.approx(single["difference"]) and one["se"] == pytest.approx(single["se"])
    # Two runs on the same images: one contrast over the four models' joint covariance.
    aurocs, cov = delong_covariance(y, np.stack([a, b, c, d]))
    contrast = np.array([-1, 1, -1, 1]) / 2
    shuffled = frames(y, c).sample(frac=1, random_state=0)  # the order of rows does not matter
    both = delong_pooled_difference([(frames(y, a), frames(y, b)), (shuffled, frames(y, d))])
    assert both["observed"] == pytest.approx(contrast @ aurocs) and both["n_pairs"] == 2
    assert both["se"] == pytest.approx(math.sqrt(contrast @ cov @ contrast))
    # Two runs on other images (seeds' own test splits): independent, variances added.
    other = delong_test(y, c, d)
    split = delong_pooled_difference([(frames(y, a), frames(y, b)), (frames(y, c, "s"), frames(y, d, "s"))])
    assert split["observed"] == pytest.approx((single["difference"] + other["difference"]) / 2)
    assert split["se"] == pytest.approx(math.sqrt(single["se"] ** 2 + other["se"] ** 2) / 2)


def test_bad_input_is_refused():
    y, a, b = tiny_example()
    with pytest.raises(ValueError, match="at least two images of each class"):
        delong_test(np.ones(13), a, b)
    with pytest.raises(ValueError, match="differ in length"):
        delong_test(y[:-1], a, b)
    with pytest.raises(ValueError, match="at least one pair"):
        delong_pooled_difference([])
    with pytest.raises(ValueError, match="same test images"):
        delong_pooled_difference([(frames(y, a), frames(y, b, "x"))])
