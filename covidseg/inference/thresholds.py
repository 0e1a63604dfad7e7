"""A classifier run's operating point: the threshold on p(positive class) chosen on the validation split with
best.ckpt's weights by `eval.threshold_rule` (covidseg.stats.operating_point), stored in best.ckpt
(covidseg.checkpoints.store_operating_point) and written to metrics.json as operating_point/<key>.

A validation split without a class is refused before training (every class needs images in train, val and
test: covidseg.data.split.check_classes_in_splits). A rule that the trained model cannot meet on validation
(its point would call every validation image one class, or no threshold beats chance) does not fail the
run: the model and its test metrics are still results (a collapsed model is one the report must show), so
the run falls back to the fixed threshold (eval.threshold, default 0.5) and says so in the log, in the
checkpoint and in metrics.json (operating_point/rule fixed, operating_point/requested_rule and
operating_point/note).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L

from covidseg.data.datamodule import CXRDataModule
from covidseg.errors import UserError
from covidseg.inference.evaluation import class_probabilities
from covidseg.models.classifier import Classifier
from covidseg.models.divergence import check_finite_outputs
from covidseg.models.metrics import POSITIVE_THRESHOLD
from covidseg.stats.operating_point import DEFAULT_RULE, choose_threshold, parse_rule

log = logging.getLogger(__name__)

KEY_PREFIX = "operating_point/"


def _rule_and_fixed(settings: Mapping[str, Any] | None) -> tuple[str, float]:
    settings = settings or {}
    fixed = settings.get("threshold")
    rule = settings.get("threshold_rule") or DEFAULT_RULE
    return rule, POSITIVE_THRESHOLD if fixed is None else float(fixed)


def choose_run_point(
    trainer: L.Trainer,
    model: Classifier,
    datamodule: CXRDataModule,
    ckpt_path: str | None,
    settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The run's operating point, chosen on the validation split with the weights of `ckpt_path`.

    Args:
        trainer: the fit's trainer (its device and precision predict the validation images).
        model: the binary classifier.
        datamodule: the run's data, set up for fit.
        ckpt_path: best.ckpt; None: `model`'s weights as they are (no checkpoint was kept).
        settings: the run's `eval` config (threshold_rule, threshold).

    Returns:
        rule, threshold, positive_class, chosen_on ("val"; "eval.threshold" for fixed), n_val,
        val_sensitivity, val_specificity; with requested_rule and note when the rule could not be met.
    """
    rule, fixed = _rule_and_fixed(settings)
    val = datamodule.datasets["val"]
    probs = class_probabilities(
        trainer, model, val, datamodule.mean, datamodule.std, datamodule.batch_size, ckpt_path=ckpt_path
    )
    paths = list(datamodule.table.loc[datamodule.table["split"] == "val", "path"])
    if len(probs) < len(paths):  # fast_dev_run / limit_predict_batches: the loader is unshuffled, a prefix
        log.warning(
            "Operating point chosen on %d of %d validation images (limited batches)", len(probs), len(paths)
        )
    check_finite_outputs(probs, paths[: len(probs)], f"Checkpoint {ckpt_path}" if ckpt_path else "The model")
    targets = val.targets.numpy()[: len(probs)]
    classes = model.class_names
    try:
        point = choose_threshold(targets, probs[:, 1], rule, fixed, classes)
        note = None
    except UserError as err:  # RuleNotMet; or a class missing from a limited validation pass
        log.warning("%s This run uses eval.threshold=%s (rule fixed) instead.", err, fixed)
        point = choose_threshold(targets, probs[:, 1], "fixed", fixed, classes)
        note = str(err)
    record: dict[str, Any] = {
        "rule": point.rule,
        "threshold": point.threshold,
        "positive_class": classes[1],
        "chosen_on": "eval.threshold" if point.rule == "fixed" else "val",
        "n_val": len(targets),
        "val_sensitivity": point.sensitivity,
        "val_specificity": point.specificity,
    }
    if note is not None:
        record.update(requested_rule=parse_rule(rule).text, note=note)
    log.info(
        "Operating point %s: p(%s) > %.4f (validation: sensitivity %.3f, specificity %.3f, %d images)",
        point.rule,
        classes[1],
        point.threshold,
        point.sensitivity,
        point.specificity,
        len(targets),
    )
    return record


def point_keys(point: Mapping[str, Any] | None) -> dict[str, Any]:
    """metrics.json's operating_point/<key> for each entry of the point (none for more than two classes)."""
    return {f"{KEY_PREFIX}{key}": value for key, value in (point or {}).items()}


def eval_point(model: Classifier, settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """covidseg-eval's operating point: eval.threshold when given (rule fixed), else the checkpoint's
    (Classifier.decision_point: 0.5 for checkpoints from before covidseg stored one); None for more than two
    classes.

    Args:
        model: the loaded classifier.
        settings: covidseg-eval's `eval` config (threshold).
    """
    threshold = (settings or {}).get("threshold")
    if threshold is None or not model.binary:
        return model.decision_point()
    return {
        "rule": "fixed",
        "threshold": float(threshold),
        "positive_class": model.class_names[-1],
        "chosen_on": "eval.threshold",
    }
