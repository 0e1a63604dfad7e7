"""Real tiny trainings through the console scripts, as a user runs them (in process, `cli`, except where
the process boundary is the point: exit codes seen by a shell, DDP's launcher)."""

import glob
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_dataset, read_metrics, run_cli

CONTRACT_FLOATS = ["test/acc", "test/precision", "test/recall", "test/specificity", "test/f1", "test/auroc"]
# at the operating point stored in best.ckpt, and threshold-free (covidseg.stats.operating_point.set_metrics)
POINT_FLOATS = [f"test/op/{m}" for m in ("acc", "precision", "recall", "specificity", "f1")] + [
    "test/brier", "test/ece", "test/sens@spec0.90", "test/sens@spec0.95", "test/spec@sens0.90"
]  # fmt: skip
SMALL = ["data.image_size=32", "model.backbone=test_resnet"]  # what these tests check does not need resnet18


@pytest.fixture(scope="module")
def tiny_run(tiny_classifier_run) -> Path:
    """The session's tiny classifier run (tests/conftest.py), trained once for this file and others."""
    return tiny_classifier_run


@pytest.mark.slow
def test_tiny_training_meets_the_run_directory_contract(tiny_run):
    for name in [
        ".hydra/config.yaml",
        "splits.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.json",
        "predictions.csv",
    ]:
        assert (tiny_run / name).is_file(), name
    # the gallery's arrays for covidseg-report; no lung energy: raw input and no segmenter to measure with
    assert (tiny_run / "cam_gallery.npz").is_file() and not (tiny_run / "lung_energy.json").exists()
    metrics = read_metrics(tiny_run)
    for key in CONTRACT_FLOATS:
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    confusion = metrics["test/confusion"]
    assert len(confusion) == 2 and sum(map(sum, confusion)) == metrics["n_test"]
    assert metrics["backbone"] == "test_resnet" and metrics["input"] == "raw" and metrics["seed"] == 1
    assert metrics["recipe"] == "study" and metrics["val/single_class_epochs"] in (0, 1, 2)
    assert metrics["n_train"] > metrics["n_test"] > metrics["n_val"] > 0
    assert 0 <= metrics["best_epoch"] < 2 and metrics["train_seconds"] > 0
    assert metrics["dropped_labels"] == {"pneumonia": 500}
    splits = pd.read_csv(tiny_run / "splits.csv")
    assert splits.groupby("patient_id")["split"].nunique().max() == 1
    assert len(splits) == metrics["n_train"] + metrics["n_val"] + metrics["n_test"]


@pytest.mark.slow
def test_csv_and_offline_wandb_loggers_write_their_files(tiny_run):
    curves = pd.read_csv(tiny_run / "csv" / "metrics.csv")
    per_epoch = curves.dropna(subset=["val/acc"])
    assert list(per_epoch["epoch"]) == [0, 1]
    assert curves["train/loss"].notna().sum() == 2
    runs = glob.glob(str(tiny_run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1 and Path(runs[0]).stat().st_size > 0


@pytest.mark.slow
def test_eval_on_the_checkpoint_agrees_with_the_test_metrics(tiny_run, tmp_path, cli):
    out = tmp_path / "eval"
    cli(
        "covidseg-eval",
        f"ckpt_path={tiny_run}/checkpoints/best.ckpt",
        f"data.split_file={tiny_run}/splits.csv",
        "data.split=test",
        f"hydra.run.dir={out}",
    )
    trained, evaluated = read_metrics(tiny_run), read_metrics(out)
    for key in CONTRACT_FLOATS + POINT_FLOATS:
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    assert evaluated["operating_point/threshold"] == trained["operating_point/threshold"]
    assert evaluated["test/confusion"] == trained["test/confusion"]
    a, b = pd.read_csv(tiny_run / "predictions.csv"), pd.read_csv(out / "predictions.csv")
    assert list(a["path"]) == list(b["path"])
    assert (a["prob_covid"] - b["prob_covid"]).abs().max() < 1e-5


@pytest.mark.slow
def test_external_set_is_tested_in_the_run_and_covidseg_eval_reproduces_it(
    tiny_run, external_actualmed, tmp_path, cli
):
    metrics = read_metrics(tiny_run)
    name = external_actualmed.name
    assert metrics["external_sets"] == {name: str(external_actualmed.resolve())}
    assert metrics[f"external/{name}/n"] == 44 and metrics[f"external/{name}/n_patients"] == 39
    predictions = pd.read_csv(tiny_run / f"predictions_{name}.csv")
    assert len(predictions) == 44 and set(predictions["source"]) == {"Actualmed (agchung)"}
    out = tmp_path / "eval_external"
    cli(
        "covidseg-eval",
        f"ckpt_path={tiny_run}/checkpoints/best.ckpt",
        f"data.root={external_actualmed}",
        f"hydra.run.dir={out}",
    )
    evaluated = read_metrics(out)
    for key in CONTRACT_FLOATS:
        assert evaluated[key] == pytest.approx(metrics[f"external/{name}/{key[5:]}"], abs=1e-6), key
    assert evaluated["test/confusion"] == metrics[f"external/{name}/confusion"]
    again = pd.read_csv(out / "predictions.csv")
    assert list(again["path"]) == list(predictions["path"])
    assert (again["prob_covid"] - predictions["prob_covid"]).abs().max() < 1e-5


@pytest.mark.slow
def test_eval_on_another_folder_uses_every_image(tiny_run, tmp_path, cli):
    other = make_dataset(tmp_path / "other_hospital", {"normal": 5, "covid": 4, "tb": 2}, size=80)
    out = tmp_path / "eval"
    cli(
        "covidseg-eval",
        f"ckpt_path={tiny_run}/checkpoints/best.ckpt",
        f"data.root={other}",
        f"hydra.run.dir={out}",
    )
    metrics = read_metrics(out)
    assert metrics["n_test"] == 9 and metrics["dropped_labels"] == {"tb": 2}
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["path", "label", "patient_id", "target", "prob_normal", "prob_covid"]
    assert len(predictions) == 9


def test_unknown_backbone_fails_at_start_with_suggestions(tmp_path):
    # A real process: the exit code a shell sees (the other refusals here run in process).
    result = run_cli(
        "covidseg-train",
        "model.backbone=resnet181",
        "debug=fast",
        "data.limit=30",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert result.returncode == 2
    assert (
        "is not a timm model" in result.stderr + result.stdout and "resnet18" in result.stderr + result.stdout
    )
    assert "Traceback" not in result.stderr


def test_bad_data_root_is_a_clear_error(tmp_path, cli_refused):
    cli_refused(
        "covidseg-train",
        f"data.root={tmp_path}/missing",
        "debug=fast",
        f"hydra.run.dir={tmp_path}/r",
        expected="does not exist",
    )


@pytest.mark.slow
def test_three_class_config_trains_with_the_same_code(tmp_path, cli):
    run = tmp_path / "run"
    cli(
        "covidseg-train",
        "data=covid_cxr_3class",
        "debug=fast",
        "data.limit=45",
        *SMALL,
        f"hydra.run.dir={run}",
    )
    metrics = read_metrics(run)
    assert metrics["classes"] == ["normal", "pneumonia", "covid"]
    assert len(metrics["test/confusion"]) == 3 and metrics["dropped_labels"] == {}
    assert json.loads((run / "metrics.json").read_text())["test/f1"] >= 0


@pytest.mark.slow
def test_ddp_job_trains_on_two_processes_and_tests_every_image_once(tmp_path):
    run = tmp_path / "run"
    run_cli(
        "covidseg-train",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.limit=40",
        *SMALL,
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={run}",
    )
    metrics = read_metrics(run)
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == metrics["n_test"] == sum(map(sum, metrics["test/confusion"]))
    assert predictions["path"].is_unique


@pytest.mark.slow
def test_a_rerun_into_the_same_folder_replaces_the_previous_results(tmp_path, cli):
    run = tmp_path / "run"
    args = [
        "data.limit=30",
        *SMALL,
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={run}",
    ]
    cli("covidseg-train", *args, "seed=0")
    (run / "failed.json").write_text("{}")  # as if an earlier attempt had failed here
    cli("covidseg-train", *args, "seed=1")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (run / "failed.json").exists() and read_metrics(run)["seed"] == 1
