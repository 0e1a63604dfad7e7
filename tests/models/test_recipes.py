"""Training recipes (conf/recipe): the study's, the stable one, weight EMA; single-class epochs."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from covidseg.checkpoints import load_module, read_checkpoint
from covidseg.errors import UserError
from covidseg.models.averaging import EMA
from covidseg.models.base import warmup_cosine
from covidseg.models.classifier import Classifier, predicted_counts
from covidseg.paths import CONF_DIR, register_resolvers
from tests.conftest import read_metrics

SIZE = 32
HINT = "Train one first."


def compose_train(overrides: list[str], out: Path):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train", overrides=[*overrides, "logger=none", f"paths.output_dir={out}", f"paths.log_dir={out}"]
        )


def loader(n: int = 8, batch_size: int = 4) -> DataLoader:
    target = torch.arange(n) % 2
    return DataLoader(TensorDataset(torch.randn(n, 1, SIZE, SIZE), target), batch_size=batch_size)


def fit(cfg, epochs: int) -> tuple[Classifier, L.Trainer]:
    """The configured model, checkpoint callback (and EMA), clipping and scheduler on 8 random images."""
    L.seed_everything(0)
    model = instantiate(cfg.model, _convert_="all", class_names=["normal", "covid"])
    callbacks = [instantiate(c) for name, c in cfg.callbacks.items() if name != "progress_bar"]
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=cfg.paths.output_dir,
    )
    trainer.fit(model, loader(), loader())
    return model, trainer


# -- the recipes as configs ---------------------------------------------------------------------------
def test_the_default_recipe_is_the_study(tmp_path):
    cfg = compose_train([], tmp_path)
    assert cfg.recipe_name == "study"
    assert cfg.model.optimizer._target_ == "torch.optim.Adam"
    assert cfg.model.optimizer.lr == 0.002 and cfg.model.optimizer.weight_decay == 0.0
    assert cfg.model.scheduler is None and cfg.model.scheduler_interval == "epoch"
    assert (
        cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.model_checkpoint.mode == "min"
    )
    assert cfg.trainer.gradient_clip_val is None


def test_the_study_recipe_keeps_the_plateau_model(tmp_path):
    cfg = compose_train(["model=classifier_plateau"], tmp_path)
    assert cfg.recipe_name == "study"
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.ReduceLROnPlateau"


def test_the_stable_recipe(tmp_path):
    cfg = compose_train(["recipe=stable"], tmp_path)
    assert cfg.recipe_name == "stable" and cfg.model.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.model.scheduler._target_ == "covidseg.models.base.warmup_cosine"
    assert cfg.model.scheduler_interval == "step" and cfg.trainer.gradient_clip_val == 1.0
    assert (
        cfg.callbacks.model_checkpoint.monitor == "val/auroc" and cfg.callbacks.model_checkpoint.mode == "max"
    )
    assert "ema" not in cfg.callbacks
    # A command-line value still wins over the recipe's, and early stopping follows its monitor.
    cfg = compose_train(["recipe=stable", "model.optimizer.lr=0.0003", "callbacks=early_stopping"], tmp_path)
    assert cfg.model.optimizer.lr == 0.0003 and cfg.callbacks.early_stopping.monitor == "val/auroc"


def test_stable_ema_is_stable_plus_an_ema_callback(tmp_path):
    cfg = compose_train(["recipe=stable_ema"], tmp_path)
    assert cfg.recipe_name == "stable_ema" and cfg.model.scheduler_interval == "step"
    assert isinstance(instantiate(cfg.callbacks.ema), EMA)


# -- the schedule -----------------------------------------------------------------------------------------
def test_warmup_cosine_rises_linearly_then_decays_to_the_final_share():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup_share=0.1, final_share=0.05)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[55] == pytest.approx(0.05 + 0.95 * 0.5) and lrs[100] == pytest.approx(0.05)


def test_warmup_cosine_rejects_shares_outside_their_range():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(UserError, match="warmup_share"):
        warmup_cosine(optimizer, total_steps=10, warmup_share=1.5)


def test_the_stable_recipe_steps_its_schedule_per_optimizer_step(tmp_path):
    _, trainer = fit(compose_train(["recipe=stable"], tmp_path), epochs=2)
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.last_epoch == 4  # 2 epochs x 2 batches
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.05
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed to final_share 0
    assert trainer.gradient_clip_val == 1.0
    assert trainer.checkpoint_callback.monitor == "val/auroc"


def test_a_recipe_scheduler_merged_with_the_plateau_one_is_a_clear_error(tmp_path):
    cfg = compose_train(["model=classifier_plateau", "recipe=stable"], tmp_path)
    with pytest.raises(UserError, match=r"model\.scheduler cannot be built"):
        fit(cfg, epochs=1)


def test_an_unknown_scheduler_interval_is_a_clear_error():
    with pytest.raises(UserError, match=r"model\.scheduler_interval must be one of"):
        Classifier(scheduler_interval="batch")


# -- the weight EMA ----------------------------------------------------------------------------------------
def test_ema_checkpoints_hold_the_averaged_weights_and_the_test_uses_them(tmp_path):
    model, trainer = fit(compose_train(["recipe=stable_ema"], tmp_path), epochs=1)
    ema = next(c for c in trainer.callbacks if isinstance(c, EMA))
    assert ema.decay == pytest.approx(1 - 1 / 5)  # 2 steps x horizon 0.1 < min_steps 5
    assert next(ema._average_model.parameters()).device == trainer.strategy.root_device
    best = trainer.checkpoint_callback.best_model_path
    checkpoint = read_checkpoint(best, HINT)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys() == model.state_dict().keys()
    assert not torch.equal(averaged["net.conv1.weight"], raw["net.conv1.weight"])
    # After the fit the model holds the average (one epoch: the one best.ckpt was written at).
    assert all(torch.equal(model.state_dict()[k], v) for k, v in averaged.items())

    loaded = load_module(Classifier, best, HINT)  # weights_only=True
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in averaged.items())

    # Testing best.ckpt must test the averaged weights, not the raw ones Lightning's hook would restore.
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    trainer.test(model, loader(), ckpt_path=best, verbose=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in averaged.items())


def test_ema_needs_a_horizon_in_range():
    with pytest.raises(UserError, match="horizon"):
        EMA(horizon=0)


# -- validation epochs that predict a single class ------------------------------------------------------
class FirstPixels(nn.Module):
    """Logits = the first pixels of each image: the test decides every prediction through its inputs."""

    def __init__(self, outputs: int):
        super().__init__()
        self.outputs = outputs
        self.scale = nn.Parameter(torch.ones(1))  # something to train

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, : self.outputs] * self.scale


def controlled(classes: list[str]) -> Classifier:
    model = Classifier(class_names=classes)
    model.net = FirstPixels(1 if len(classes) == 2 else len(classes))
    return model


def images(first_pixels: list[list[float]]) -> DataLoader:
    x = torch.zeros(len(first_pixels), 1, 4, 4)
    x[:, 0, 0, : len(first_pixels[0])] = torch.tensor(first_pixels)
    y = torch.arange(len(first_pixels)) % 2
    return DataLoader(TensorDataset(x, y), batch_size=2)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_binary_validation_epochs_with_one_predicted_class_are_counted():
    model, validator = controlled(["normal", "covid"]), trainer()
    epochs = {
        "all covid": [[3.0], [1.0], [2.0], [0.5]],
        "both": [[3.0], [-1.0], [2.0], [0.5]],
        "all normal (a logit of 0 is p = 0.5, negative)": [[-3.0], [0.0], [-2.0], [-0.5]],
    }
    single = []
    for first_pixels in epochs.values():
        validator.validate(model, images(first_pixels), verbose=False)
        single.append(float(validator.callback_metrics["val/single_class"]))
    assert single == [1.0, 0.0, 1.0] and model.single_class_epochs == 2


def test_multiclass_validation_epochs_use_the_most_probable_class():
    model, validator = controlled(["normal", "covid", "pneumonia"]), trainer()
    validator.validate(model, images([[0, 0, 1], [0, 0, 2], [1, 0, 3]]), verbose=False)
    assert model.single_class_epochs == 1
    validator.validate(model, images([[0, 0, 1], [0, 5, 2], [1, 0, 3]]), verbose=False)
    assert model.single_class_epochs == 1 and float(validator.callback_metrics["val/single_class"]) == 0.0


def test_the_sanity_check_is_not_counted():
    model = controlled(["normal", "covid"])
    data = images([[3.0], [1.0], [2.0], [0.5]])
    trainer(max_epochs=1, num_sanity_val_steps=2).fit(model, data, data)
    assert model.single_class_epochs == 1


def test_epoch_loss_and_metrics_cover_every_image_of_uneven_batches():
    """Metrics and the loss are computed once per epoch from the kept batches (2 + 2 + 1 images here): the
    loss is the mean over images, as Lightning's batch-size-weighted mean was, and test_results keeps the
    images' order."""
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc

    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])
    data = images([[v] for v in logits.tolist()])
    targets = torch.arange(5) % 2
    model, runner = controlled(["normal", "covid"]), trainer()
    runner.validate(model, data, verbose=False)
    got = runner.callback_metrics
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
    assert torch.isclose(got["val/loss"], expected_loss)
    assert torch.isclose(got["val/auroc"], binary_auroc(torch.sigmoid(logits), targets))
    assert torch.isclose(got["val/acc"], binary_accuracy(torch.sigmoid(logits), targets))
    runner.test(model, data, verbose=False)
    results = model.test_results()
    assert torch.allclose(results["probs"][:, 1], torch.sigmoid(logits)) and results["targets"].tolist() == [
        0, 1, 0, 1, 0
    ]  # fmt: skip
    assert results["confusion"] == [[1, 2], [1, 1]] and torch.isclose(
        runner.callback_metrics["test/loss"], expected_loss
    )


def test_predicted_counts_follow_the_threshold_rule():
    probs = torch.tensor([[0.5, 0.5], [0.4, 0.6], [0.9, 0.1]])
    assert predicted_counts(probs, 2).tolist() == [2, 1]
    assert predicted_counts(torch.tensor([[0.2, 0.5, 0.3]] * 2), 3).tolist() == [0, 2, 0]


@pytest.mark.slow
def test_a_stable_ema_run_records_its_recipe_and_eval_reproduces_its_test(tmp_path, covid_cxr, cli):
    """End to end: the step schedule, clipping, EMA and val/auroc checkpoint through covidseg-train, and
    covidseg-eval on best.ckpt measuring the same (averaged) weights the run tested."""
    run = tmp_path / "run"
    cli("covidseg-train", "recipe=stable_ema", "debug=tiny", "logger=csv", f"hydra.run.dir={run}")
    metrics = read_metrics(run)
    assert metrics["recipe"] == "stable_ema" and metrics["monitor"] == "val/auroc"
    curves = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/single_class"])
    assert metrics["val/single_class_epochs"] == int(curves["val/single_class"].sum()) and len(curves) == 2
    assert "recipe_name: stable_ema" in (run / ".hydra" / "config.yaml").read_text()
    out = tmp_path / "eval"
    cli(
        "covidseg-eval",
        f"ckpt_path={run}/checkpoints/best.ckpt",
        f"data.split_file={run}/splits.csv",
        "data.split=test",
        f"hydra.run.dir={out}",
    )
    evaluated = read_metrics(out)
    for key in ("test/auroc", "test/acc", "test/loss"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key
