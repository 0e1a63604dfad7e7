"""covidseg.stats.operating_point against hand-checked ROC points and a brute-force search over thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidseg.errors import UserError
from covidseg.models.metrics import predicted_positive
from covidseg.stats.binary import recall, specificity
from covidseg.stats.operating_point import (
    RuleNotMet,
    choose_threshold,
    parse_rule,
    roc_points,
    sensitivity_at_specificity,
    set_metrics,
    specificity_at_sensitivity,
)

# Ten images, 4 positive. From the top: 0.95 (pos), 0.9 (neg), 0.8 (pos), 0.7 (pos), 0.6 (neg), 0.5 (neg),
# 0.4 (pos), 0.3, 0.2, 0.1 (neg). Calling the top k positive gives (sensitivity, specificity):
# k=1 (.25, 1), k=2 (.25, 5/6), k=3 (.5, 5/6), k=4 (.75, 5/6) J=.583, k=5 (.75, 4/6), k=6 (.75, .5),
# k=7 (1, .5) J=.5, k=8 (1, 2/6), ...
P = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
Y = np.array([0, 0, 0, 1, 0, 0, 1, 1, 0, 1])


def measured(y, p, threshold):
    return recall(y, p, threshold), specificity(y, p, threshold)


@pytest.mark.parametrize(
    ("rule", "threshold", "sens", "spec"),
    [
        ("youden", 0.65, 0.75, 5 / 6),  # the midpoint of 0.6 (negative side) and 0.7 (positive side)
        ("sens@0.90", 0.35, 1.0, 0.5),  # the highest threshold keeping all four positives
        ("spec@0.80", 0.65, 0.75, 5 / 6),  # the lowest threshold with one false positive of six
        ("spec@0.90", 0.925, 0.25, 1.0),  # no false positive: only 0.95 above it
        ("sens@0.5", 0.75, 0.5, 5 / 6),  # 0.95, 0.9, 0.8 above: the most specific with two of four
    ],
)
def test_rules_choose_the_hand_checked_points(rule, threshold, sens, spec):
    point = choose_threshold(Y, P, rule, classes=("normal", "covid"))
    assert point.threshold == pytest.approx(threshold)
    assert (point.sensitivity, point.specificity) == pytest.approx((sens, spec))
    assert measured(Y, P, point.threshold) == pytest.approx((sens, spec))  # prob > threshold reproduces it
    assert (point.n_negative, point.n_positive) == (6, 4)


def test_sensitivity_and_specificity_at_a_target_are_read_off_the_steps():
    assert sensitivity_at_specificity(Y, P, 0.90) == 0.25
    assert sensitivity_at_specificity(Y, P, 0.80) == 0.75
    assert specificity_at_sensitivity(Y, P, 0.90) == 0.5
    assert specificity_at_sensitivity(Y, P, 0.50) == pytest.approx(5 / 6)
    # a specificity of exactly the target counts: 7 of 10 negatives is 0.7, not 1 - 0.3
    y = np.array([0] * 10 + [1] * 2)
    p = np.array([0.1] * 7 + [0.6, 0.7, 0.8] + [0.65, 0.9])
    assert specificity_at_sensitivity(y, p, 0.5) == 1.0
    assert sensitivity_at_specificity(y, p, 0.7) == 1.0  # threshold 0.55: 7 negatives below, both positives


def test_tied_probabilities_stay_on_one_side():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.2, 0.5, 0.5, 0.8, 0.8])
    youden = choose_threshold(y, p, "youden")
    assert youden.threshold == pytest.approx(0.65) and youden.sensitivity == pytest.approx(2 / 3)
    sens = choose_threshold(y, p, "sens@0.90")
    assert sens.threshold == pytest.approx(0.35)  # both 0.5s positive: a tie is never split
    assert measured(y, p, sens.threshold) == (1.0, 0.5)


def test_thresholds_reproduce_every_roc_point_and_match_a_brute_force_search():
    rng = np.random.default_rng(3)
    for trial in range(30):
        n = int(rng.integers(4, 40))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        # float32 probabilities rounded to few values: ties, and exact 0 and 1 at the ends
        p = np.round(rng.random(n), int(rng.integers(1, 3))).astype(np.float32)
        if trial % 5 == 0:
            p[0], p[1] = 0.0, 1.0
        points = roc_points(y, p)
        for t, tp, fp in zip(points["threshold"], points["tp"], points["fp"]):
            called = predicted_positive(p, t)
            assert (int((called & (y == 1)).sum()), int((called & (y == 0)).sum())) == (tp, fp)
        candidates = [-1.0, *np.unique(p.astype(float))]
        pairs = [measured(y, p, t) for t in candidates]
        for x in (0.5, 0.9, 0.95):
            best_sens = max(s for s, sp in pairs if sp >= x)
            best_spec = max(sp for s, sp in pairs if s >= x)
            assert sensitivity_at_specificity(y, p, x) == best_sens
            assert specificity_at_sensitivity(y, p, x) == best_spec
        best_j = max(s + sp - 1 for s, sp in pairs)
        if best_j > 0:
            point = choose_threshold(y, p, "youden")
            assert point.sensitivity + point.specificity - 1 == pytest.approx(best_j)
            assert measured(y, p, point.threshold) == (point.sensitivity, point.specificity)


def test_rules_that_only_degenerate_points_meet_are_refused():
    # the lowest-ranked image is positive: sensitivity >= 0.9 of 3 positives needs everything positive
    with pytest.raises(RuleNotMet, match=r"sens@0.90: on the 2 normal and 3 covid .*calls every one of them"):
        choose_threshold([1, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9], "sens@0.90", classes=("normal", "covid"))
    # the top-ranked image is negative: specificity >= 0.9 of 2 negatives needs nothing positive
    with pytest.raises(RuleNotMet, match=r"spec@0.90: .*calls every one of them negative"):
        choose_threshold([0, 1, 1, 0], [0.9, 0.8, 0.7, 0.1], "spec@0.90")
    # a model no better than a coin (here: one constant output) has no Youden point
    with pytest.raises(RuleNotMet, match=r"youden: no threshold separates .* Youden's J 0.000"):
        choose_threshold([0, 1, 0, 1], [0.7, 0.7, 0.7, 0.7], "youden")


def test_a_class_absent_from_validation_is_refused_except_for_fixed():
    with pytest.raises(UserError, match=r"youden chooses .* has 0 normal and 2 covid image\(s\)"):
        choose_threshold([1, 1], [0.2, 0.3], "youden", classes=("normal", "covid"))
    point = choose_threshold([1, 1], [0.2, 0.6], "fixed", fixed=0.5)
    assert (point.rule, point.threshold, point.sensitivity) == ("fixed", 0.5, 0.5)
    assert math.isnan(point.specificity)
    assert math.isnan(sensitivity_at_specificity([1, 1], [0.2, 0.6], 0.9))


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("youden", "youden"), (" Youden ", "youden"), ("fixed", "fixed"), ("sens@0.9", "sens@0.90"),
     ("spec@.95", "spec@0.95"), ("sens@0.975", "sens@0.975")],
)  # fmt: skip
def test_rule_texts_parse_to_one_spelling(text, canonical):
    assert parse_rule(text).text == canonical


@pytest.mark.parametrize("text", ["sens@1", "sens@0", "sens@1.0", "sens@90", "sens@0.9x", "", 0.9, None])
def test_bad_rule_texts_name_the_option_and_the_rules(text):
    with pytest.raises(UserError, match=r"eval.threshold_rule must be youden, sens@<x>, spec@<x> .* fixed"):
        parse_rule(text)


def test_set_metrics_keys_and_values():
    metrics = set_metrics(Y, P, 0.65)
    assert set(metrics) == {
        "brier", "ece", "sens@spec0.90", "sens@spec0.95", "spec@sens0.90",
        "op/acc", "op/precision", "op/recall", "op/specificity", "op/f1",
    }  # fmt: skip
    assert metrics["op/recall"] == 0.75 and metrics["op/specificity"] == pytest.approx(5 / 6)
    assert metrics["op/acc"] == 0.8 and metrics["op/precision"] == 0.75
    assert metrics["sens@spec0.90"] == 0.25 and metrics["spec@sens0.90"] == 0.5
    single = set_metrics([1, 1, 1], [0.2, 0.7, 0.9], 0.5)
    assert math.isnan(single["sens@spec0.90"]) and single["op/recall"] == pytest.approx(2 / 3)
