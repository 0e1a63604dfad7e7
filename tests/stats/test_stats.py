"""covidseg.stats against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from covidseg import stats
from covidseg.models.metrics import METRIC_NAMES, POSITIVE_THRESHOLD, predicted_positive


def test_mean_ci_hand_computed():
    r = stats.mean_ci([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert r["n"] == 5
    assert r["mean"] == pytest.approx(3.0)
    assert r["std"] == pytest.approx(math.sqrt(2.5))
    assert r["ci_low"] == pytest.approx(3.0 - half, abs=1e-5)
    assert r["ci_high"] == pytest.approx(3.0 + half, abs=1e-5)


def test_mean_ci_drops_nan_and_single_value():
    r = stats.mean_ci([1.0, float("nan"), 2.0, 3.0, 4.0, 5.0])
    assert r["n"] == 5 and r["mean"] == pytest.approx(3.0)
    one = stats.mean_ci([0.7, float("nan")])
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.7)
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert math.isnan(stats.mean_ci([])["mean"])


def test_paired_difference_hand_computed():
    a = [0.80, 0.82, 0.78, 0.85]
    b = [0.84, 0.83, 0.83, 0.87]
    d = np.array([0.04, 0.01, 0.05, 0.02])  # b - a
    mean, sd = d.mean(), math.sqrt(((d - d.mean()) ** 2).sum() / 3)  # 0.03, sqrt(0.001/3)
    t = mean / (sd / math.sqrt(4))  # = 3.286335...
    r = stats.paired_difference(a, b)
    assert r["n"] == 4
    assert r["differences"] == pytest.approx(d.tolist())
    assert r["mean_diff"] == pytest.approx(0.03)
    assert r["std_diff"] == pytest.approx(sd)
    assert r["t_stat"] == pytest.approx(t)
    assert r["t_stat"] == pytest.approx(3.2863353, abs=1e-6)
    half = 3.182446 * sd / 2  # t_{0.975,3}
    assert r["ci_low"] == pytest.approx(0.03 - half, abs=1e-6)
    assert r["ci_high"] == pytest.approx(0.03 + half, abs=1e-6)
    assert 0.04 < r["p_value"] < 0.05  # two-sided p for t=3.286, df=3 is 0.0462


def test_paired_difference_edge_cases():
    same = stats.paired_difference([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean_diff"] == 0.0 and same["p_value"] == 1.0
    single = stats.paired_difference([0.5], [0.6])
    assert math.isnan(single["p_value"]) and single["mean_diff"] == pytest.approx(0.1)
    dropped = stats.paired_difference([0.5, float("nan"), 0.7], [0.6, 0.9, 0.8])
    assert dropped["n"] == 2
    with pytest.raises(ValueError):
        stats.paired_difference([1, 2], [1, 2, 3])


def test_binary_metrics_small_example():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array(
        [0.9, 0.6, 0.4, 0.2, 0.7, 0.1, 0.55, 0.8]
    )  # exactly 0.5: test_threshold_rule_matches_torchmetrics
    # predictions at 0.5: 1 1 0 0 1 0 1 1 -> TP=3 (idx 0,1,7), FN=1 (idx 2), FP=2 (idx 4,6), TN=2 (idx 3,5)
    assert stats.accuracy(y, p) == pytest.approx(5 / 8)
    assert stats.precision(y, p) == pytest.approx(3 / 5)
    assert stats.recall(y, p) == pytest.approx(3 / 4)
    assert stats.specificity(y, p) == pytest.approx(2 / 4)
    assert stats.f1(y, p) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert stats.precision([0, 0], [0.1, 0.2]) == 0.0  # nothing predicted positive
    assert stats.recall(y, p, threshold=0.95) == 0.0


def test_threshold_rule_matches_torchmetrics():
    """A probability of exactly the threshold is negative, in covidseg.stats as in the training metrics."""
    import torch
    from torchmetrics.classification import BinaryAccuracy, BinaryRecall

    from covidseg.models.classifier import classification_metrics

    assert POSITIVE_THRESHOLD == 0.5
    assert predicted_positive([0.5, 0.5000001, 0.4999999]).tolist() == [False, True, False]
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.5, 0.5, 0.9, 0.2, 0.1, 0.5])
    # 0.5 negative: predictions 0 0 1 0 0 0 -> acc 4/6, recall 1/3 (0.5 positive would give 3/6 and 2/3)
    assert stats.accuracy(y, p) == pytest.approx(4 / 6)
    assert stats.recall(y, p) == pytest.approx(1 / 3)
    preds, target = torch.tensor(p, dtype=torch.float32), torch.tensor(y)
    assert BinaryAccuracy()(preds, target).item() == pytest.approx(stats.accuracy(y, p))
    assert BinaryRecall()(preds, target).item() == pytest.approx(stats.recall(y, p))
    # every metric the classifier logs agrees with the statistics of the same name
    logged = classification_metrics(2)(preds, target)
    for name in METRIC_NAMES:
        assert logged[name].item() == pytest.approx(stats.BINARY_METRICS[name](y, p), abs=1e-6), name


def test_metric_functions_use_the_logged_names():
    assert tuple(stats.BINARY_METRICS) == METRIC_NAMES


def _brute_force_auc(y, p):
    pos = [s for s, t in zip(p, y) if t == 1]
    neg = [s for s, t in zip(p, y) if t == 0]
    score = sum(1.0 if sp > sn else 0.5 if sp == sn else 0.0 for sp, sn in itertools.product(pos, neg))
    return score / (len(pos) * len(neg))


def test_auroc_matches_pair_count():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    p = np.round(rng.random(40), 1)  # rounding makes ties
    assert stats.auroc(y, p) == pytest.approx(_brute_force_auc(y, p))
    assert stats.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert math.isnan(stats.auroc([1, 1], [0.2, 0.3]))


def _predictions(prob_covid: np.ndarray, target: np.ndarray, patients: np.ndarray) -> pd.DataFrame:
    labels = np.where(target == 1, "covid", "normal")
    return pd.DataFrame(
        {
            "path": [f"{lab}/{i}.png" for i, lab in enumerate(labels)],
            "label": labels,
            "patient_id": patients,
            "prob_normal": 1.0 - prob_covid,
            "prob_covid": prob_covid,
            "target": target.astype(int),
        }
    )


@pytest.fixture
def test_set():
    rng = np.random.default_rng(0)
    target = np.repeat([0, 1], 40)
    patients = np.array([f"p{i // 2}" for i in range(80)])  # two images per patient
    return rng, target, patients


def test_bootstrap_identical_predictions(test_set):
    rng, target, patients = test_set
    a = _predictions(rng.random(80), target, patients)
    r = stats.bootstrap_patient_difference(a, a.sample(frac=1.0, random_state=1), "auroc", n_boot=200)
    assert r["observed"] == 0.0 and r["ci_low"] == 0.0 and r["ci_high"] == 0.0
    assert r["p_value"] == 1.0
    assert r["n_patients"] == 40 and r["n_images"] == 80


def test_bootstrap_perfect_vs_random(test_set):
    rng, target, patients = test_set
    a = _predictions(rng.random(80), target, patients)
    b = _predictions(np.where(target == 1, 0.9, 0.1), target, patients)
    r = stats.bootstrap_patient_difference(a, b, "acc", n_boot=300, seed=1)
    assert r["metric_b"] == 1.0
    assert r["observed"] == pytest.approx(1.0 - r["metric_a"])
    assert r["observed"] > 0 and r["ci_low"] > 0
    assert r["p_value"] < 0.01
    # a callable on the frame gives the same answer as the named metric
    r2 = stats.bootstrap_patient_difference(
        a, b, lambda f: stats.accuracy(f["target"], f["prob_covid"]), n_boot=300, seed=1
    )
    assert r2["ci_low"] == pytest.approx(r["ci_low"]) and r2["p_value"] == pytest.approx(r["p_value"])


def test_bootstrap_rejects_different_images(test_set):
    rng, target, patients = test_set
    a = _predictions(rng.random(80), target, patients)
    with pytest.raises(ValueError, match="same test images"):
        stats.bootstrap_patient_difference(a, a.iloc[1:], "auroc", n_boot=10)
    with pytest.raises(ValueError, match="Unknown metric"):
        stats.bootstrap_patient_difference(a, a, "dice", n_boot=10)


def test_bootstrap_more_than_two_classes_only_accuracy(test_set):
    rng, target, patients = test_set
    probs = rng.dirichlet(np.ones(3), size=80)
    frame = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(80)],
            "patient_id": patients,
            "prob_a": probs[:, 0],
            "prob_b": probs[:, 1],
            "prob_c": probs[:, 2],
            "target": target,
        }
    )
    r = stats.bootstrap_patient_difference(frame, frame, "acc", n_boot=20)
    assert r["metric_a"] == pytest.approx(np.mean(probs.argmax(axis=1) == target)) and r["observed"] == 0.0
    for name in ("f1", "accuracy"):
        with pytest.raises(ValueError, match="Unknown metric"):
            stats.bootstrap_patient_difference(frame, frame, name, n_boot=10)


# --------------------------------------------------------------------------- pooled patient bootstrap


def test_weighted_metrics_equal_the_metrics_of_resampled_rows(test_set):
    rng, target, patients = test_set
    frame = _predictions(np.round(rng.random(80), 1), target, patients)  # rounding makes ties
    counts = rng.integers(0, 3, size=(6, 80)).astype(float)
    for name, fn in stats.BINARY_METRICS.items():
        got = stats.weighted_metric(name, frame)(counts)
        rows = [np.repeat(np.arange(80), c.astype(int)) for c in counts]
        expected = [fn(target[r], frame["prob_covid"].to_numpy()[r]) for r in rows]
        assert got == pytest.approx(expected, nan_ok=True), name


def test_bootstrap_metric_of_perfect_predictions_is_exactly_one(test_set):
    _, target, patients = test_set
    perfect = _predictions(np.where(target == 1, 0.9, 0.1), target, patients)
    for name in METRIC_NAMES:
        r = stats.bootstrap_patient_metric([perfect, perfect], name, n_boot=300)
        assert (r["estimate"], r["ci_low"], r["ci_high"]) == (1.0, 1.0, 1.0), name


def test_bootstrap_metric_interval_stays_inside_the_metric_range(test_set):
    rng, target, patients = test_set
    # a weak model on few patients: a t-interval over such values would leave [0, 1]
    frames = [_predictions(rng.random(80) * 0.6, target, patients) for _ in range(3)]
    for name in METRIC_NAMES:
        r = stats.bootstrap_patient_metric(frames, name, n_boot=500, seed=2)
        assert 0.0 <= r["ci_low"] <= r["estimate"] <= r["ci_high"] <= 1.0, name
        assert r["estimate"] == pytest.approx(np.mean(r["values"]))
        assert r["n_tables"] == 3 and r["n_patients"] == [40, 40, 40] and r["n_images"] == [80, 80, 80]


def test_bootstrap_metric_against_a_direct_computation(test_set):
    """The same draws (whole patients, numpy's Generator, sorted patient order) by hand."""
    rng, target, patients = test_set
    frame = _predictions(rng.random(80), target, patients)
    n_boot = 100  # below CHUNK: one block of draws
    r = stats.bootstrap_patient_metric(frame, "f1", n_boot=n_boot, seed=7)
    codes, uniques = pd.factorize(frame["patient_id"], sort=True)
    drawn = np.random.default_rng(7).integers(0, len(uniques), size=(n_boot, len(uniques)))
    by_hand = []
    for row in drawn:
        idx = np.concatenate([np.flatnonzero(codes == j) for j in row])
        by_hand.append(stats.f1(target[idx], frame["prob_covid"].to_numpy()[idx]))
    low, high = np.quantile(by_hand, [0.025, 0.975])
    assert r["ci_low"] == pytest.approx(low) and r["ci_high"] == pytest.approx(high)
    assert r["estimate"] == pytest.approx(stats.f1(target, frame["prob_covid"]))


def test_tables_of_one_test_set_share_their_draws(test_set):
    """Two copies of one table (e.g. two seeds tested on the same pooled out-of-fold set) give the
    interval of one; tables of different patients are resampled independently, which narrows it."""
    rng, target, patients = test_set
    frame = _predictions(rng.random(80), target, patients)
    one = stats.bootstrap_patient_metric(frame, "auroc", n_boot=400, seed=3)
    shared = stats.bootstrap_patient_metric([frame, frame.iloc[::-1]], "auroc", n_boot=400, seed=3)
    assert (shared["ci_low"], shared["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    other = frame.assign(patient_id=[f"q{p}" for p in patients])
    independent = stats.bootstrap_patient_metric([frame, other], "auroc", n_boot=400, seed=3)
    assert independent["ci_high"] - independent["ci_low"] < one["ci_high"] - one["ci_low"]


def test_pooled_difference_over_pairs(test_set):
    rng, target, patients = test_set
    pairs = []
    for _ in range(3):
        a = _predictions(rng.random(80), target, patients)
        pairs.append((a, _predictions(np.where(target == 1, 0.9, 0.1), target, patients)))
    r = stats.bootstrap_pooled_difference(pairs, "acc", n_boot=300, seed=1)
    accs = [stats.accuracy(target, a["prob_covid"]) for a, _ in pairs]
    assert r["metric_a"] == pytest.approx(np.mean(accs)) and r["metric_b"] == 1.0
    assert r["observed"] == pytest.approx(1.0 - np.mean(accs)) and 0 < r["ci_low"] < r["ci_high"] <= 1.0
    assert r["p_value"] < 0.01 and r["n_pairs"] == 3 and r["n_patients"] == [40, 40, 40]
    # one pair is the classic paired bootstrap
    single = stats.bootstrap_pooled_difference(pairs[:1], "acc", n_boot=300, seed=1)
    classic = stats.bootstrap_patient_difference(*pairs[0], "acc", n_boot=300, seed=1)
    assert single["ci_low"] == classic["ci_low"] and classic["n_patients"] == 40


def test_resamples_where_a_metric_is_undefined_are_left_out():
    """Recall of a model that finds both covid patients: resamples without a covid patient have no
    recall and must not count as recall 0 (which would stretch the interval to [0, 1])."""
    target = np.array([1, 1] + [0] * 10)
    frame = _predictions(np.where(target == 1, 0.9, 0.2), target, np.array([f"p{i}" for i in range(12)]))
    r = stats.bootstrap_patient_metric(frame, "recall", n_boot=500, seed=0)
    assert (r["estimate"], r["ci_low"], r["ci_high"]) == (1.0, 1.0, 1.0)
    # (10/12)^12 = 11 % of resamples draw no covid patient
    assert 0.8 * 500 < r["n_valid"] < 0.95 * 500
    # on the full set the logged convention holds: no positive at all -> recall 0
    negatives = frame[frame["target"] == 0]
    assert stats.bootstrap_patient_metric(negatives, "recall", n_boot=10)["estimate"] == 0.0
