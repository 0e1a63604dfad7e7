"""A run's operating point (covidseg.inference.thresholds): the config checks, the fallback, and what the
session's tiny run stores in best.ckpt and metrics.json."""

from __future__ import annotations

import os
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from covidseg.checkpoints import operating_point, read_checkpoint
from covidseg.data.datasets import ArrayDataset
from covidseg.deploy.record import decision
from covidseg.errors import UserError
from covidseg.inference import thresholds
from covidseg.inference.evaluation import class_probabilities, evaluation_datamodule
from covidseg.inference.prediction import prediction_rows
from covidseg.models.classifier import load_classifier
from covidseg.paths import CONF_DIR
from covidseg.runs.checks import check_config
from covidseg.stats import BINARY_METRICS
from covidseg.stats.calibration import brier_score
from covidseg.stats.operating_point import choose_threshold, sensitivity_at_specificity
from tests.conftest import read_metrics

CLASSES = ["normal", "covid"]
POINT_KEYS = {
    "rule",
    "threshold",
    "positive_class",
    "chosen_on",
    "n_val",
    "val_sensitivity",
    "val_specificity",
}
SET_KEYS = ["brier", "ece", "sens@spec0.90", "sens@spec0.95", "spec@sens0.90"] + [
    f"op/{m}" for m in ("acc", "precision", "recall", "specificity", "f1")
]


# -- options, checked before training -----------------------------------------------------------------
def test_the_shipped_eval_options_pass_and_bad_ones_name_the_option():
    for config in ("train", "eval"):
        check_config(OmegaConf.create({"eval": OmegaConf.load(CONF_DIR / f"{config}.yaml")["eval"]}))

    def check(**options):
        check_config(OmegaConf.create({"eval": {"threshold_rule": "youden", "threshold": None, **options}}))

    check(threshold_rule="sens@0.95")
    check(threshold_rule="fixed", threshold=0.3)
    with pytest.raises(UserError, match=r"eval.threshold_rule must be youden, sens@<x>.*got 'sens@95'"):
        check(threshold_rule="sens@95")
    with pytest.raises(UserError, match=r"eval.threshold_rule must be .*got 'best'. Set e.g."):
        check(threshold_rule="best")
    with pytest.raises(UserError, match=r"eval.threshold=0.3 has no effect with eval.threshold_rule=youden"):
        check(threshold=0.3)
    with pytest.raises(UserError, match=r"eval.threshold must be null or a number strictly between 0 and 1"):
        check(threshold_rule="fixed", threshold=1.5)


class StubData:
    """What choose_run_point reads of a CXRDataModule."""

    classes = CLASSES
    mean, std, batch_size = 0.5, 0.25, 4

    def __init__(self, targets: list[int]):
        n = len(targets)
        self.datasets = {"val": ArrayDataset(np.zeros((n, 8, 8), np.uint8), targets)}
        self.table = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "split": "val"})


def chosen(monkeypatch, probs: list[float], targets: list[int], settings: dict) -> dict:
    stacked = np.stack([1 - np.asarray(probs), np.asarray(probs)], axis=1).astype(np.float32)
    monkeypatch.setattr(thresholds, "class_probabilities", lambda *args, **kwargs: stacked)
    return thresholds.choose_run_point(
        None, SimpleNamespace(class_names=CLASSES), StubData(targets), None, settings
    )


def test_the_run_point_is_the_rules_on_validation(monkeypatch):
    point = chosen(monkeypatch, [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], {"threshold_rule": "youden"})
    assert set(point) == POINT_KEYS
    assert point["rule"] == "youden" and point["chosen_on"] == "val" and point["n_val"] == 4
    assert point["threshold"] == pytest.approx(0.6) and point["val_specificity"] == 1.0
    fixed = chosen(
        monkeypatch, [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], {"threshold_rule": "fixed", "threshold": 0.3}
    )
    assert (fixed["rule"], fixed["threshold"], fixed["chosen_on"]) == ("fixed", 0.3, "eval.threshold")
    assert fixed["val_sensitivity"] == 1.0 and fixed["val_specificity"] == 0.5


def test_a_rule_the_model_cannot_meet_falls_back_to_fixed_and_says_why(monkeypatch, caplog):
    # a collapsed model: one probability for every image
    point = chosen(monkeypatch, [0.7] * 4, [0, 1, 0, 1], {"threshold_rule": "youden", "threshold": None})
    assert (point["rule"], point["threshold"], point["requested_rule"]) == ("fixed", 0.5, "youden")
    assert "no threshold separates the classes better than chance" in point["note"]
    assert "This run uses eval.threshold=0.5 (rule fixed) instead" in caplog.text
    assert thresholds.point_keys(point)["operating_point/requested_rule"] == "youden"


def test_eval_uses_the_stored_point_or_eval_threshold():
    stored = {"rule": "sens@0.90", "threshold": 0.2, "positive_class": "covid", "chosen_on": "val"}
    model = SimpleNamespace(binary=True, class_names=CLASSES, decision_point=lambda: stored)
    assert thresholds.eval_point(model, {"threshold": None}) == stored
    override = thresholds.eval_point(model, {"threshold": 0.7})
    assert (override["rule"], override["threshold"], override["chosen_on"]) == (
        "fixed",
        0.7,
        "eval.threshold",
    )


def test_prediction_rows_use_the_point_and_name_its_rule():
    table = pd.DataFrame({"error": [None, None, "unreadable"]})
    probs = np.array([[0.7, 0.3], [0.9, 0.1]])
    point = {"rule": "youden", "threshold": 0.25}
    rows = prediction_rows(["a.png", "b.png", "c.png"], table, probs, CLASSES, point)
    assert list(rows["predicted"][:2]) == ["covid", "normal"]  # 0.3 > 0.25: covid, where 0.5 says normal
    assert (rows["threshold"] == 0.25).all() and (rows["threshold_rule"] == "youden").all()
    assert list(rows.columns)[-4:] == ["predicted", "threshold", "threshold_rule", "error"]


def test_preprocessing_json_records_the_threshold_and_its_rule():
    point = {"rule": "spec@0.90", "threshold": 0.8125, "chosen_on": "val"}
    output = decision(CLASSES, point)
    assert (output["threshold"], output["threshold_rule"], output["threshold_chosen_on"]) == (
        0.8125,
        "spec@0.90",
        "val",
    )
    assert (decision(CLASSES)["threshold"], decision(CLASSES)["threshold_rule"]) == (0.5, "fixed")
    assert decision(["a", "b", "c"])["threshold"] is None


# -- the session's tiny run -----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_tiny_run_stores_its_point_and_measures_every_set_at_it(tiny_classifier_run, external_actualmed):
    run = tiny_classifier_run
    metrics = read_metrics(run)
    point = operating_point(read_checkpoint(run / "checkpoints" / "best.ckpt", ""))
    assert set(point) >= POINT_KEYS and point["rule"] == "youden" and point["positive_class"] == "covid"
    assert metrics["operating_point/rule"] == point["rule"]
    assert metrics["operating_point/threshold"] == point["threshold"]
    assert point["n_val"] == metrics["n_val"]
    # the stored threshold reproduces the validation sensitivity and specificity it claims, and is what the
    # rule chooses on the validation images predicted again from best.ckpt
    model = load_classifier(run / "checkpoints" / "best.ckpt")
    cache = os.environ["COVIDSEG_CACHE_DIR"]
    val = evaluation_datamodule(
        model, {"batch_size": 16, "cache_dir": cache, "split_file": str(run / "splits.csv"), "split": "val"}
    )
    val.setup("test")
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    probs = class_probabilities(trainer, model, val.datasets["test"], val.mean, val.std, 16)[:, 1]
    targets = val.datasets["test"].targets.numpy()
    assert BINARY_METRICS["recall"](targets, probs, point["threshold"]) == point["val_sensitivity"]
    assert BINARY_METRICS["specificity"](targets, probs, point["threshold"]) == point["val_specificity"]
    assert choose_threshold(targets, probs, "youden").threshold == pytest.approx(point["threshold"], abs=1e-6)
    # test and external sets: the new keys, recomputed from their predictions at the stored threshold
    name = external_actualmed.name
    sets = {"test": run / "predictions.csv", f"external/{name}": run / f"predictions_{name}.csv"}
    for prefix, file in sets.items():
        rows = pd.read_csv(file)
        y, p = rows["target"], rows["prob_covid"]
        for key in SET_KEYS:
            assert isinstance(metrics[f"{prefix}/{key}"], float), (prefix, key)
        for m in ("acc", "precision", "recall", "specificity", "f1"):
            expected = BINARY_METRICS[m](y, p, point["threshold"])
            assert metrics[f"{prefix}/op/{m}"] == pytest.approx(expected, abs=1e-9), (prefix, m)
        # predictions.csv holds the float32 probabilities as shortest decimal text, read back as float64
        assert metrics[f"{prefix}/brier"] == pytest.approx(brier_score(y, p), abs=1e-6)
        at_spec = sensitivity_at_specificity(y, p, 0.9)
        assert metrics[f"{prefix}/sens@spec0.90"] == pytest.approx(at_spec, nan_ok=True)
