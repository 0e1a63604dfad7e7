"""Hyperparameter search: covidseg-train returns its optimized_metric, and an Optuna study runs through the
CLI, survives a failed trial and writes the best parameters."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from covidseg.errors import UserError
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.runs import objective as objective_module
from covidseg.runs.objective import check_optimized_metric, failed_value, objective
from tests.conftest import run_cli

register_resolvers()
SEARCHED = [
    "model.optimizer.lr",
    "model.optimizer.weight_decay",
    "data.augment.rotation",
    "data.augment.translate",
    "data.augment.brightness",
    "data.augment.contrast",
    "model.backbone",
]


def compose_train(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_optuna_config_searches_lr_weight_decay_augmentation_and_backbone():
    cfg = compose_train(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert "OptunaSweeper" in sweeper._target_ and sweeper.direction == "maximize"
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed is not None
    assert list(sweeper.params) == SEARCHED
    assert sweeper.params["model.optimizer.lr"].startswith("tag(log, interval(")
    assert cfg.optimized_metric == "val/auroc" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert compose_train([]).optimized_metric == "val/auroc"  # a plain run returns the same metric


def test_optimized_metric_names_are_checked_before_training():
    cfg = OmegaConf.create(
        {"optimized_metric": "val/auroc", "data": {"external": ["/data/external-actualmed"]}}
    )
    check_optimized_metric(cfg)
    check_optimized_metric(OmegaConf.merge(cfg, {"optimized_metric": "external/external-actualmed/auroc"}))
    with pytest.raises(UserError, match=r"optimized_metric='external/other/auroc' is not measured"):
        check_optimized_metric(OmegaConf.merge(cfg, {"optimized_metric": "external/other/auroc"}))
    with pytest.raises(UserError, match=r"should be minimized.*hydra.sweeper.direction=minimize"):
        check_optimized_metric(OmegaConf.merge(cfg, {"optimized_metric": "val/loss"}), "maximize")
    check_optimized_metric(OmegaConf.merge(cfg, {"optimized_metric": "val/loss"}), "minimize")


def test_objective_is_the_named_metric_and_an_undefined_one_the_worst_value(monkeypatch):
    metrics = {"val/auroc": 0.75, "external/x/auroc": 0.5, "test/auroc": float("nan")}
    assert objective(metrics, "val/auroc") == 0.75 and objective(metrics, "external/x/auroc") == 0.5
    assert objective(metrics, None) is None and objective({}, "val/auroc") is None  # a non-zero DDP rank
    for direction, worst in (("maximize", -math.inf), ("minimize", math.inf), (None, None)):
        monkeypatch.setattr(objective_module, "_sweeper_direction", lambda d=direction: d)
        assert objective(metrics, "test/auroc") == worst and failed_value() == worst
    with pytest.raises(UserError, match=r"not in this run's metrics\.json"):
        objective(metrics, "val/f1")


@pytest.fixture(scope="module")
def study(tmp_path_factory, covid_cxr):
    sweep = tmp_path_factory.mktemp("optuna") / "sweep"
    result = run_cli(
        "covidseg-train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "debug=tiny",
        # Test only: a backbone timm does not know makes a trial fail. With this seed optuna 2.10's sampler
        # proposes it once in the three trials (the assertions read what each trial got).
        "model.backbone=choice(test_resnet,no_such_net)",
        "hydra.sweeper.sampler.seed=3",
        f"hydra.sweeper.storage=sqlite:///{sweep.parent}/study.db",  # to read every trial's value back
        f"hydra.sweep.dir={sweep}",
        check=False,
    )
    return sweep, result


def trials(sweep: Path) -> dict[str, dict]:
    """Each trial's backbone and outcome (metrics.json or failed.json), by job folder."""
    found = {}
    for job in sorted(p.parent for p in sweep.glob("*/.hydra")):
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        backbone = next(o.split("=", 1)[1] for o in overrides if o.startswith("model.backbone="))
        metrics = job / "metrics.json"
        found[job.name] = {
            "backbone": backbone,
            "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None,
            "failed": (job / "failed.json").is_file(),
        }
    return found


@pytest.mark.slow
def test_study_finishes_with_a_failed_trial_and_writes_the_best_parameters(study):
    sweep, result = study
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = trials(sweep)
    assert len(jobs) == 3
    failed = [name for name, job in jobs.items() if job["failed"]]
    ok = [name for name, job in jobs.items() if job["metrics"] is not None]
    assert failed and ok, jobs  # the seed above must give both kinds of trial
    assert all(jobs[n]["backbone"] == "no_such_net" and jobs[n]["metrics"] is None for n in failed)
    assert all(jobs[n]["backbone"] == "test_resnet" for n in ok)
    best = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    assert (
        sorted(best["best_params"]) == sorted(SEARCHED)
        and best["best_params"]["model.backbone"] == "test_resnet"
    )
    assert 1e-4 <= best["best_params"]["model.optimizer.lr"] <= 1e-2
    scores = [jobs[n]["metrics"]["val/auroc"] for n in ok]
    assert best["best_value"] == pytest.approx(max(scores))
    assert all(jobs[n]["metrics"]["optimized_metric"] == "val/auroc" for n in ok)
    assert f"Optuna study {sweep}: {len(ok)} of 3 trial(s) finished, {len(failed)} failed." in result.stdout
    for name in failed:
        assert (
            f"job {name} failed: UserError: model.backbone='no_such_net' is not a timm model" in result.stdout
        )
    assert f"best value {best['best_value']}" in result.stdout
    # Optuna saw the failed trial as the worst value, and every other trial's val/auroc.
    stored = optuna.load_study(study_name="covidseg", storage=f"sqlite:///{sweep.parent}/study.db")
    values = {t.number: t.value for t in stored.trials}
    assert sorted(values.values()) == sorted([-math.inf] * len(failed) + scores)


@pytest.mark.slow
def test_a_study_whose_direction_contradicts_the_metric_stops_before_any_trial(tmp_path, cli_refused):
    sweep = tmp_path / "sweep"
    cli_refused(
        "covidseg-train",
        "hparams_search=optuna",
        "optimized_metric=val/loss",
        f"hydra.sweep.dir={sweep}",
        expected=re.escape("hydra.sweeper.direction=minimize"),
    )
    assert not list(sweep.glob("*/.hydra"))
