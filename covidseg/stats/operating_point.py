"""Operating points of a binary classifier: a threshold on the positive-class probability chosen by a named
rule, and sensitivity / specificity read off the empirical ROC curve.

The positive rule is covidseg's one rule, ``prob > threshold``
(``covidseg.models.metrics.predicted_positive``). The ROC curve here is the empirical step curve: one point
per distinct probability (scikit-learn's ``roc_curve`` with ``drop_intermediate=False``) plus "nothing
positive"; nothing is interpolated between points, so every sensitivity and specificity reported is one a
threshold really gives. Point k calls the images with the k highest distinct probabilities positive; its
threshold is the midpoint between the lowest probability called positive and the highest called negative
(either neighbour when the midpoint rounds onto one), so that ``predicted_positive(prob, threshold)``
reproduces the point's counts exactly on the data it was chosen on. Ties (images with equal probability) can
never be split: they are always on the same side of a threshold.

Rules (``eval.threshold_rule``):

* ``youden``: the point with the largest Youden's J = sensitivity + specificity - 1; among equal J, the
  highest threshold (the fewest positive calls).
* ``sens@<x>`` (0 < x < 1, e.g. ``sens@0.90``): the highest threshold whose sensitivity is >= x, i.e. the
  most specific point that reaches that sensitivity.
* ``spec@<x>``: the lowest threshold whose specificity is >= x, i.e. the most sensitive such point.
* ``fixed``: a given threshold (``eval.threshold``, default 0.5).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from covidseg.errors import UserError
from covidseg.models.metrics import POSITIVE_THRESHOLD
from covidseg.stats.binary import BINARY_METRICS
from covidseg.stats.calibration import brier_score, expected_calibration_error
from covidseg.stats.seeds import ArrayLike

RULE_OPTION = "eval.threshold_rule"
DEFAULT_RULE = "youden"
ALLOWED_RULES = "youden, sens@<x>, spec@<x> (0 < x < 1, e.g. sens@0.90) or fixed"
_TARGETED = re.compile(r"(sens|spec)@(0?\.[0-9]+)")
_NAMES = {"sens": "sensitivity", "spec": "specificity"}

# The metrics.json keys per test or external set (prefix `test/`, `external/<name>/`): sensitivity at
# these specificities and specificity at these sensitivities, and the threshold metrics at the chosen point.
SENS_AT_SPEC = (0.90, 0.95)
SPEC_AT_SENS = (0.90,)
THRESHOLD_METRICS = ("acc", "precision", "recall", "specificity", "f1")
OP_PREFIX = "op/"


@dataclass(frozen=True)
class Rule:
    """A parsed threshold rule: `kind` youden, sens, spec or fixed; `target` the x of sens@x / spec@x."""

    kind: str
    target: float | None = None

    @property
    def text(self) -> str:
        """The rule as written in configs and records (sens@0.90, not sens@.9)."""
        if self.target is None:
            return self.kind
        return f"{self.kind}@{_fraction(self.target)}"


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold with the sensitivity and specificity it gives on the data it was chosen on."""

    rule: str
    threshold: float
    sensitivity: float
    specificity: float
    n_negative: int
    n_positive: int


def _fraction(x: float) -> str:
    return f"{x:.2f}" if round(x, 2) == x else f"{x:g}"


def parse_rule(text: object, option: str = RULE_OPTION) -> Rule:
    """The rule `text` names (case and surrounding spaces ignored).

    Args:
        text: youden, sens@<x>, spec@<x> with 0 < x < 1, or fixed.
        option: the config option it came from, for the message.

    Raises:
        UserError: anything else, naming the option and the allowed values.
    """
    words = str(text).strip().lower() if isinstance(text, str) else None
    if words in ("youden", "fixed"):
        return Rule(words)
    match = _TARGETED.fullmatch(words or "")
    if match and 0.0 < float(match.group(2)) < 1.0:
        return Rule(match.group(1), float(match.group(2)))
    raise UserError(f"{option} must be {ALLOWED_RULES}; got {text!r}. Set e.g. {option}={DEFAULT_RULE}.")


def _check_both_classes(rule: Rule, n_negative: int, n_positive: int, classes: Sequence[str]) -> None:
    """Refuse to choose a threshold by `rule` on data without both classes (fixed needs no data).

    Args:
        rule: the parsed rule.
        n_negative: images of the negative class (classes[0]) in the data the point is chosen on.
        n_positive: images of the positive class (classes[1]).
        classes: the two class names, negative first.

    Raises:
        UserError: one class is absent, naming the rule, the counts and what to do.
    """
    if rule.kind == "fixed" or (n_negative > 0 and n_positive > 0):
        return
    raise UserError(
        f"{RULE_OPTION}={rule.text} chooses the threshold on the validation split, which has "
        f"{n_negative} {classes[0]} and {n_positive} {classes[1]} image(s): without both classes no "
        "sensitivity or specificity can be measured. Use a split whose validation part has both "
        f"(data.split_file, data.split_ratios, more data), or {RULE_OPTION}=fixed (eval.threshold)."
    )


class RuleNotMet(UserError):
    """The rule's point on the validation data calls every image one class, or no threshold separates the
    classes better than chance (Youden's J <= 0): a threshold that means nothing."""


def _binary(targets: ArrayLike, prob_positive: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(targets).ravel().astype(int)
    p = np.asarray(prob_positive, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"targets and probabilities differ in length: {y.size} vs {p.size}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("operating points need binary targets (0 or 1)")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite")
    return y, p


def _between(low: float, high: float) -> float:
    """A threshold t with low <= t < high: the midpoint, or `low` where the midpoint rounds onto an end."""
    middle = (low + high) / 2.0
    return middle if low <= middle < high else low


def roc_points(targets: ArrayLike, prob_positive: ArrayLike) -> dict[str, np.ndarray]:
    """Every point of the empirical ROC curve, from "nothing positive" to "everything positive".

    Args:
        targets: 1 for the positive class, 0 otherwise; both classes present.
        prob_positive: the positive-class probability of each image.

    Returns:
        arrays `threshold` (under prob > threshold), `sensitivity`, `specificity`, `tp`, `fp`, one entry per
        point; the thresholds decrease.

    Raises:
        ValueError: a class is absent, or the inputs are not binary targets and finite probabilities.
    """
    y, p = _binary(targets, prob_positive)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a ROC curve needs both classes, got {n_neg} negative and {n_pos} positive")
    fpr, tpr, cuts = roc_curve(y, p, drop_intermediate=False)
    # Counts, not rates: a specificity of (n - fp) / n is exactly the decimal it should be (0.7, not 1 - 0.3).
    tp = np.rint(tpr * n_pos).astype(int)
    fp = np.rint(fpr * n_neg).astype(int)
    scores = cuts[1:]  # the distinct probabilities, highest first; cuts[0] is sklearn's "nothing positive"
    upper = np.concatenate([[max(1.0, scores[0])], scores])  # lowest probability called positive
    lower = np.concatenate([scores, [0.0 if scores[-1] > 0 else -1.0]])  # highest called negative
    threshold = np.array([_between(lo, hi) for lo, hi in zip(lower, upper)])
    return {
        "threshold": threshold,
        "sensitivity": tp / n_pos,
        "specificity": (n_neg - fp) / n_neg,
        "tp": tp,
        "fp": fp,
    }


def _index(points: dict[str, np.ndarray], rule: Rule) -> int:
    sens, spec = points["sensitivity"], points["specificity"]
    if rule.kind == "youden":
        return int(np.argmax(sens + spec - 1.0))  # the first maximum: the highest threshold among equals
    if rule.kind == "sens":
        return int(np.argmax(sens >= rule.target))  # everything positive (the last point) always reaches it
    if rule.kind == "spec":
        return int(np.flatnonzero(spec >= rule.target)[-1])  # nothing positive (the first) always does
    raise ValueError(f"rule {rule.text} chooses no ROC point")


def choose_threshold(
    targets: ArrayLike,
    prob_positive: ArrayLike,
    rule: Rule | str = DEFAULT_RULE,
    fixed: float = POSITIVE_THRESHOLD,
    classes: Sequence[str] = ("negative", "positive"),
) -> OperatingPoint:
    """The operating point `rule` chooses on (targets, prob_positive), usually the validation split.

    Args:
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the positive-class probability of each image.
        rule: youden, sens@<x>, spec@<x> or fixed (see the module's docstring), parsed or as text.
        fixed: the threshold of the `fixed` rule.
        classes: the two class names, negative first, for messages.

    Returns:
        the point; its sensitivity and specificity are those of predicted_positive(prob, threshold) on
        these data (nan for fixed when a class is absent).

    Raises:
        UserError: an unknown rule, or a class absent for a rule other than fixed.
        RuleNotMet: the rule's point calls every image one class, or Youden's J is <= 0 everywhere.
    """
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    y, p = _binary(targets, prob_positive)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if rule.kind == "fixed":
        sens = BINARY_METRICS["recall"](y, p, fixed) if n_pos else math.nan
        spec = BINARY_METRICS["specificity"](y, p, fixed) if n_neg else math.nan
        return OperatingPoint(rule.text, float(fixed), sens, spec, n_neg, n_pos)
    _check_both_classes(rule, n_neg, n_pos, classes)
    points = roc_points(y, p)
    k = _index(points, rule)
    sens, spec = float(points["sensitivity"][k]), float(points["specificity"][k])
    counts = f"{n_neg} {classes[0]} and {n_pos} {classes[1]} validation image(s)"
    if rule.kind == "youden" and sens + spec - 1.0 <= 0.0:
        raise RuleNotMet(
            f"{RULE_OPTION}=youden: no threshold separates the classes better than chance on the {counts} "
            f"(largest Youden's J {sens + spec - 1.0:.3f}), so no threshold means anything: the model did "
            "not learn the task (see val/single_class_epochs). Retrain it (another learning rate, "
            f"recipe=stable), or set {RULE_OPTION}=fixed eval.threshold=<t> to measure it at a threshold "
            "of your choice."
        )
    if 0 < k < len(points["threshold"]) - 1 or rule.kind == "youden":
        return OperatingPoint(rule.text, float(points["threshold"][k]), sens, spec, n_neg, n_pos)
    called = classes[1] if k else classes[0]
    raise RuleNotMet(
        f"{RULE_OPTION}={rule.text}: on the {counts}, only a threshold that calls every one of them "
        f"{called} reaches {_NAMES[rule.kind]} {_fraction(rule.target)} (sensitivity {sens:.3f}, "
        f"specificity {spec:.3f}), which is no operating point. Use more validation images "
        f"(data.split_ratios, more data), a lower target, {RULE_OPTION}={DEFAULT_RULE}, or "
        f"{RULE_OPTION}=fixed eval.threshold=<t>."
    )


def sensitivity_at_specificity(targets: ArrayLike, prob_positive: ArrayLike, specificity: float) -> float:
    """The highest sensitivity among the ROC points whose specificity is >= `specificity` (the point
    spec@<specificity> chooses; no interpolation between points). nan when a class is absent.

    Args:
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the positive-class probability of each image.
        specificity: the specificity to reach, 0 < specificity < 1.
    """
    return _at(targets, prob_positive, Rule("spec", specificity), "sensitivity")


def specificity_at_sensitivity(targets: ArrayLike, prob_positive: ArrayLike, sensitivity: float) -> float:
    """The highest specificity among the ROC points whose sensitivity is >= `sensitivity` (the point
    sens@<sensitivity> chooses; no interpolation). nan when a class is absent.

    Args:
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the positive-class probability of each image.
        sensitivity: the sensitivity to reach, 0 < sensitivity < 1.
    """
    return _at(targets, prob_positive, Rule("sens", sensitivity), "specificity")


def _at(targets: ArrayLike, prob_positive: ArrayLike, rule: Rule, measure: str) -> float:
    if not 0.0 < rule.target < 1.0:
        raise ValueError(
            f"the {_NAMES[rule.kind]} to reach must lie strictly between 0 and 1, got {rule.target}"
        )
    y, p = _binary(targets, prob_positive)
    if y.all() or not y.any():
        return math.nan
    points = roc_points(y, p)
    return float(points[measure][_index(points, rule)])


def set_metrics(targets: ArrayLike, prob_positive: ArrayLike, threshold: float) -> dict[str, float]:
    """The metrics.json keys issue 19 adds per test or external set (without the set's prefix).

    Args:
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the positive-class probability of each image.
        threshold: the run's operating point.

    Returns:
        brier, ece, sens@spec<x> (SENS_AT_SPEC), spec@sens<x> (SPEC_AT_SENS), and op/<m> for
        THRESHOLD_METRICS at `threshold` (torchmetrics' zero-division conventions, as the 0.5 ones).
    """
    y, p = _binary(targets, prob_positive)
    metrics = {"brier": brier_score(y, p), "ece": expected_calibration_error(y, p)}
    for x in SENS_AT_SPEC:
        metrics[f"sens@spec{_fraction(x)}"] = sensitivity_at_specificity(y, p, x)
    for x in SPEC_AT_SENS:
        metrics[f"spec@sens{_fraction(x)}"] = specificity_at_sensitivity(y, p, x)
    for name in THRESHOLD_METRICS:
        metrics[f"{OP_PREFIX}{name}"] = BINARY_METRICS[name](y, p, threshold)
    return metrics
