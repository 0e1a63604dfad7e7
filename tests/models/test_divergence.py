"""A diverged model is an error, not a result (covidseg.models.divergence), and values and override typos
are refused
before any work with one line naming the option and the fix (covidseg.runs.checks,
covidseg.runs.overrides)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader, TensorDataset

from covidseg.errors import UserError
from covidseg.models.classifier import Classifier, load_classifier
from covidseg.models.divergence import DivergenceCheck, check_finite_outputs, non_finite
from covidseg.models.segmenter import Segmenter, load_segmenter
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.runs.checks import check_config
from covidseg.runs.overrides import check_command_line
from tests.conftest import make_dataset, run_cli

register_resolvers()
SIZE = 32
BACKBONE = "test_resnet"  # timm's smallest resnet (0.4 M weights): checkpoints of a few MB


def compose_config(name: str, overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    with open_dict(cfg):  # ${hydra:...} only resolves inside a Hydra run
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
    return cfg


def classifier(data: dict | None = None, tmp_path: Path | None = None) -> Classifier:
    """A classifier with the data config covidseg-train records (conf/data/covid_cxr.yaml), edited by
    `data`."""
    cfg = compose_config("train", [f"data.image_size={SIZE}"], tmp_path or Path("/tmp"))
    record = OmegaConf.to_container(cfg.data, resolve=True)
    record.pop("_target_")
    record["segmenter"] = OmegaConf.to_container(cfg.segmenter, resolve=True)
    L.seed_everything(0)
    return Classifier(backbone=BACKBONE, data_config={**record, **(data or {})})


def save(model: L.LightningModule, path: Path) -> Path:
    """What Lightning's checkpoint holds of a module that load_from_checkpoint reads."""
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    return path


def with_nan_weight(model: L.LightningModule) -> L.LightningModule:
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    return model


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("nan")
    return save(with_nan_weight(classifier(tmp_path=base)), base / "best.ckpt")


# -- training stops in the epoch that diverged ------------------------------------------------------------
def fit(model: L.LightningModule, out: Path, lr: float, validate: bool = True) -> ModelCheckpoint:
    """Two epochs of two batches with the divergence check and a best/last checkpoint callback."""
    model.optimizer_factory = lambda params: torch.optim.Adam(params, lr=lr)
    x = torch.randn(16, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    target = torch.arange(16) % 2 if isinstance(model, Classifier) else (x > 0).float()
    loader = DataLoader(TensorDataset(x, target), batch_size=8)
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor="val/loss", save_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[DivergenceCheck(), checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
    )
    trainer.fit(model, loader, loader)
    return checkpoint


@pytest.mark.parametrize(
    "make", [lambda: classifier(), lambda: Segmenter(image_size=SIZE)], ids=["cls", "seg"]
)
def test_a_diverging_fit_stops_in_its_first_epoch_naming_the_learning_rate(make, tmp_path):
    with pytest.raises(UserError) as err:
        fit(make(), tmp_path / "ckpts", lr=1e12)
    message = str(err.value)
    assert message.startswith("Training diverged in epoch 0 (step 2): ") and "\n" not in message
    assert "became NaN or infinite" in message and "model.optimizer.lr=1e+12" in message
    assert "lower it, e.g. model.optimizer.lr=0.00" in message  # the module's default rate
    # The checkpoint callbacks run after the check: the diverged epoch was never saved.
    assert not (tmp_path / "ckpts").exists()


def test_without_validation_the_training_loss_is_checked_at_the_epochs_end(tmp_path):
    with pytest.raises(UserError, match=r"diverged in epoch 0 \(step 2\): the training loss and \d+ weight"):
        fit(classifier(), tmp_path, lr=1e12, validate=False)


def test_a_sane_fit_is_not_stopped(tmp_path):
    checkpoint = fit(classifier(), tmp_path, lr=1e-3)
    assert Path(checkpoint.best_model_path).is_file()
    assert non_finite(load_classifier(checkpoint.best_model_path).state_dict()) == []


def test_non_finite_names_the_floating_tensors_with_nan_or_inf():
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, math.inf]), "c": torch.tensor([0, 1]), "d": 5}
    state["e"] = torch.tensor([[float("nan")]], dtype=torch.bfloat16)
    assert non_finite(state) == ["b", "e"] and non_finite({}) == []


def test_non_finite_outputs_are_refused_naming_an_image():
    check_finite_outputs(np.array([[0.3, 0.7]]), ["a.png"], "Checkpoint x.ckpt")
    probs = torch.tensor([[0.3, 0.7], [float("nan"), float("nan")]])
    with pytest.raises(
        UserError, match=r"^Checkpoint x.ckpt gives NaN .* for 1 of 2 image\(s\) \(e.g. b.png\)"
    ):
        check_finite_outputs(probs, ["a.png", "b.png"], "Checkpoint x.ckpt")


# -- the console scripts: exit codes, one line, nothing that looks like a result ---------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("gen") / "d", {"normal": 20, "covid": 20})


TRAIN = ["debug=fast", "logger=none", f"data.image_size={SIZE}", "model.optimizer.lr=1e12"]


@pytest.mark.slow
def test_covidseg_train_with_a_huge_learning_rate_exits_2_without_metrics(generated, tmp_path, cli_refused):
    run = tmp_path / "run"
    cli_refused(
        "covidseg-train",
        f"data.root={generated}",
        *TRAIN,
        f"hydra.run.dir={run}",
        expected=r"Training diverged in epoch 0 .*model.optimizer.lr=1e\+12",
    )
    assert not (run / "metrics.json").exists() and not (run / "predictions.csv").exists()


@pytest.mark.slow
def test_a_diverged_sweep_job_is_recorded_as_failed(generated, tmp_path, cli):
    sweep = tmp_path / "sweep"
    output = cli(
        "covidseg-train", "-m", f"data.root={generated}", *TRAIN, f"hydra.sweep.dir={sweep}", expect=1
    )
    assert "0 of 1 job(s) finished, 1 failed" in output and "Training diverged in epoch 0" in output
    record = json.loads((sweep / "0" / "failed.json").read_text())
    assert (
        record["error"].startswith("UserError: Training diverged")
        and not (sweep / "0" / "metrics.json").exists()
    )


@pytest.mark.slow
def test_covidseg_train_segmenter_with_a_huge_learning_rate_exits_2(lungs, tmp_path, cli_refused):
    run = tmp_path / "seg"
    cli_refused(
        "covidseg-train-segmenter",
        "data.image_size=64",
        "data.limit=16",
        "trainer.max_epochs=2",
        "model.optimizer.lr=1e12",
        "logger=csv",
        "overlays=0",
        f"hydra.run.dir={run}",
        expected=r"Training diverged in epoch 0 .*model.optimizer.lr=1e\+12",
    )
    assert not (run / "metrics.json").exists() and not (run / "checkpoints" / "best.ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, args",
    [
        ("covidseg-eval", []),
        ("covidseg-predict", ["inputs=unused.png"]),
        ("covidseg-export", []),
    ],
)
def test_eval_predict_and_export_refuse_a_checkpoint_with_nan_weights(
    nan_checkpoint, tmp_path, command, args, cli_refused
):
    output = cli_refused(
        command,
        f"ckpt_path={nan_checkpoint}",
        *args,
        f"hydra.run.dir={tmp_path}/run",
        expected=rf"{nan_checkpoint} holds NaN or infinite weights \(1 tensor\(s\), e.g. "
        r"net\.conv1\.0\.weight\).*Retrain with a lower learning rate \(model.optimizer.lr\)",
    )
    assert len([line for line in output.splitlines() if "ERROR" in line]) == 1
    assert not any((tmp_path / "run" / name).exists() for name in ("metrics.json", "predictions.csv"))


# -- checkpoints: the one check every loader goes through -------------------------------------------------
@pytest.mark.parametrize(
    "data, expected",
    [
        ({"std": 0}, r"data.std must be a number > 0, got 0\. Set e.g. data.std=0.25\. Retrain"),
        ({"std": -0.25}, r"data.std must be a number > 0, got -0.25"),
        ({"mean": math.nan}, r"data.mean must be a finite number, got nan"),
        ({"image_size": "abc"}, r"data.image_size must be an integer >= 32, got 'abc'"),
        ({"image_size": 8}, r"data.image_size must be an integer >= 32, got 8"),
        ({"image_size": 64.0}, r"data.image_size must be an integer >= 32, got 64.0"),
    ],
)
def test_a_checkpoint_with_degenerate_preprocessing_is_refused_naming_it(data, expected, tmp_path):
    path = save(classifier(data, tmp_path), tmp_path / "best.ckpt")
    with pytest.raises(
        UserError, match=rf"^{path} records preprocessing no image can be prepared with: {expected}"
    ):
        load_classifier(path)


def test_the_segmenter_checks_its_own_preprocessing_and_weights(tmp_path):
    good = save(Segmenter(image_size=SIZE), tmp_path / "good.ckpt")
    assert load_segmenter(good).hparams.std == 0.25
    with pytest.raises(UserError, match=r"seg.ckpt records preprocessing .*data.std must be a number > 0"):
        load_segmenter(save(Segmenter(image_size=SIZE, std=0.0), tmp_path / "seg.ckpt"))
    with pytest.raises(UserError, match=r"nan.ckpt holds NaN or infinite weights"):
        load_segmenter(save(with_nan_weight(Segmenter(image_size=SIZE)), tmp_path / "nan.ckpt"))


def test_a_checkpoint_with_nan_weights_is_refused_in_process(nan_checkpoint):
    with pytest.raises(UserError, match=rf"^{nan_checkpoint} holds NaN or infinite weights") as err:
        load_classifier(nan_checkpoint)
    assert "\n" not in str(err.value)


# -- config values, checked before any work ---------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["seed=abc"], r"^seed must be an integer in 0\.\.4294967295, got 'abc'\. Set e.g. seed=0\.$"),
        (["seed=-1"], r"^seed must be an integer in 0\.\.4294967295, got -1"),
        (["seed=1.5"], r"^seed must be an integer"),
        (["data.std=0"], r"^data.std must be a number > 0, got 0\. Set e.g. data.std=0.25"),
        (["data.mean=inf"], r"^data.mean must be a finite number, got inf"),
        (["model.optimizer.lr=nan"], r"^model.optimizer.lr must be a number > 0, got nan"),
        (["data.fold=3"], r"^data.fold=3 has no effect: data.folds is null .* set data.folds=K as well"),
        (
            ["+model.optimizer.learning_rate=5"],
            r"^model.optimizer.learning_rate is not an option of torch.optim.Adam\. "
            r"Did you mean model.optimizer.lr\?$",
        ),
        (
            ["+trainer.max_epoch=1"],
            r"^trainer.max_epoch is not an option of lightning.pytorch.Trainer\. "
            r"Did you mean trainer.max_epochs\?$",
        ),
        (
            ["+model.zzz=1"],
            r"^model.zzz is not an option of covidseg.models.classifier.Classifier\. Its options: ",
        ),
        (
            ["model.optimizer._target_=torch.optim.Adamm"],
            r"^model.optimizer._target_=torch.optim.Adamm cannot be imported \(.*Adamm.*\)\. "
            r"Did you mean model.optimizer._target_=torch.optim.Adam\?$",
        ),
        (
            ["callbacks=early_stopping", "+callbacks.early_stopping.patiense=3"],
            r"^callbacks.early_stopping.patiense is not an option of .*EarlyStopping\. "
            r"Did you mean callbacks.early_stopping.patience\?",
        ),
    ],
)
def test_bad_values_and_unknown_keys_are_refused_naming_the_option(overrides, expected, tmp_path):
    cfg = compose_config("train", overrides, tmp_path)
    with pytest.raises(UserError, match=expected):
        check_config(cfg)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("train", ["model=classifier_plateau", "callbacks=early_stopping", "logger=wandb"]),
        ("train", ["recipe=stable_ema", "trainer=ddp", "seed=4294967295"]),
        ("train", ["experiment=compare", "hparams_search=optuna", "data.folds=5", "data.fold=4"]),
        ("train_segmenter", []),
        ("export", ["ckpt_path=x.ckpt"]),
    ],
)
def test_the_shipped_configs_pass_the_key_checks(name, overrides, tmp_path):
    check_config(compose_config(name, overrides, tmp_path))


# -- Hydra override typos: one line with the close match, exit 2 -----------------------------------------
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["model.backbon=resnet18"], "model has no option 'backbon'. Did you mean model.backbone=resnet18?"),
        (["modle.backbone=x"], "the config has no option 'modle'. Did you mean model.backbone=x?"),
        (["~model.backbon"], "~model.backbon: model has no option 'backbon'. Did you mean ~model.backbone?"),
        (["model=classifer"], "model=classifer: there is no config 'classifer' in group model"),
        (["debug=tny"], "Did you mean debug=tiny?"),
        (["hydra/launcher=joblb"], "Did you mean hydra/launcher=joblib?"),
        (["hydra.sweep.dirr=x"], "hydra.sweep has no option 'dirr'. Did you mean hydra.sweep.dir=x?"),
        (["+model.backbone=x"], "+model.backbone=x: model.backbone already exists; set it without the +"),
        (["model.zzz=1"], "(it has: backbone, drop_rate, "),
        (["model.backbone=["], "model.backbone=[: Hydra cannot read this override"),
        (["-m", "seed=0,1", "model.backbon=a,b"], "Did you mean model.backbone=a?"),
        (
            ["-m", "hparams_search=optuna", "hydra.sweeper.n_trails=3"],
            "Did you mean hydra.sweeper.n_trials=3?",
        ),
    ],
)
def test_override_typos_exit_2_with_one_line_naming_the_close_match(argv, expected, capsys):
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit:
        check_command_line("train", argv)
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.count("\n") == 1 and error.startswith("Error in the command line: ")
    assert expected in error


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["debug=fast", "model.backbone=resnet50"],
        ["experiment=compare", "model.backbone=resnet50,efficientnet_b0", "seed=0,1,2,3,4"],
        ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "debug=tiny"],
        ["-m", "model.optimizer.lr=interval(0.0001,0.01)", "seed=range(3)", "+trainer.max_steps=2"],
        ["--cfg", "job", "model.backbon=x"],  # Hydra's own commands are left to Hydra
    ],
)
def test_overrides_that_compose_pass(argv):
    GlobalHydra.instance().clear()
    check_command_line("train", argv)


@pytest.mark.slow
def test_a_mistyped_override_exits_2_from_the_console_script():
    result = run_cli("covidseg-eval", "ckpt_path=x.ckpt", "data.batch_sise=8", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "Error in the command line: data.batch_sise=8: data has no option 'batch_sise'. "
        "Did you mean data.batch_size=8?"
    )
