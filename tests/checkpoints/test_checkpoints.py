"""Checkpoints load without running code from them (covidseg.checkpoints), and real ones still load."""

from __future__ import annotations

import builtins
import os
import pathlib
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from covidseg.checkpoints import AtomicCheckpointIO, load_module, read_checkpoint
from covidseg.errors import UserError
from covidseg.models.classifier import Classifier, load_classifier
from covidseg.models.segmenter import Segmenter, load_segmenter
from covidseg.paths import CONF_DIR, register_resolvers

HINT = "Train one first."
SIZE = 32  # the smallest input the 5-level Unet encoder takes
BACKBONE = "test_resnet"  # timm's 0.4 M-weight resnet: what is checked does not depend on the size


class Payload:
    """Pickles as a call of `function(*args)`: what a tampered checkpoint runs on an unrestricted load."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


PAYLOADS = {
    "os.system": lambda marker: Payload(os.system, f"touch {marker}"),
    "builtins.open": lambda marker: Payload(builtins.open, str(marker), "w"),
    "pathlib.Path.touch": lambda marker: Payload(pathlib.Path.touch, marker),
}


@pytest.fixture(params=list(PAYLOADS))
def crafted(request, tmp_path) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose hyper_parameters would create `marker` when unpickled."""
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {
            "epoch": 0,
            "state_dict": {},
            "pytorch-lightning_version": L.__version__,
            "hyper_parameters": {"backbone": PAYLOADS[request.param](marker)},
        },
        path,
    )
    return path, marker


def test_the_crafted_files_are_armed(crafted):
    """Guards the tests below: an unrestricted load of the same file does run the payload."""
    path, marker = crafted
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "load",
    [
        lambda p: read_checkpoint(p, HINT),
        lambda p: load_module(Classifier, p, HINT),
        lambda p: load_module(Segmenter, p, HINT),
        load_classifier,
        load_segmenter,
    ],
    ids=[
        "read_checkpoint",
        "load_module-classifier",
        "load_module-segmenter",
        "load_classifier",
        "load_segmenter",
    ],
)
def test_a_crafted_checkpoint_is_refused_without_running_its_code(crafted, load):
    path, marker = crafted
    with pytest.raises(UserError, match="will not unpickle") as err:
        load(path)
    assert str(path) in str(err.value) and "tampered" in str(err.value)
    assert not marker.exists()


def test_eval_refuses_a_crafted_checkpoint_with_a_one_line_error(tmp_path, cli_refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({"epoch": 0, "state_dict": {}, "hyper_parameters": PAYLOADS["os.system"](marker)}, path)
    cli_refused(
        "covidseg-eval",
        f"ckpt_path={path}",
        f"hydra.run.dir={tmp_path}/eval",
        expected=re.escape(f"{path} contains Python objects") + ".*posix.system",
    )
    assert not marker.exists()


# -- real checkpoints, written the way training writes them --------------------------------------------
def fit(
    cfg, model: L.LightningModule, target: torch.Tensor, out: Path, background: bool | None = None
) -> str:
    """One epoch of one batch with the configured checkpoint callback, early stopping and CSV logger;
    `background=True` writes the checkpoints as covidseg does on a GPU."""
    cfg.paths.output_dir = str(out)
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    # The segmenter config has no early stopping; add one as in conf/callbacks/early_stopping.yaml.
    stopping = (
        instantiate(cfg.callbacks.early_stopping)
        if "early_stopping" in cfg.callbacks
        else EarlyStopping(monitor=checkpoint.monitor, mode=checkpoint.mode, patience=5)
    )
    # The classifier's last.ckpt comes from its own callback (written after every epoch, for resume=true).
    last = [instantiate(cfg.callbacks.last_checkpoint)] if "last_checkpoint" in cfg.callbacks else []
    loader = DataLoader(
        TensorDataset(torch.randn(len(target), 1, SIZE, SIZE), target), batch_size=len(target)
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=instantiate(cfg.logger.csv),
        callbacks=[checkpoint, stopping, *last],
        plugins=[AtomicCheckpointIO(background=background)],  # as covidseg.runs.fit builds its trainers
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(model, loader, loader)
    assert (
        Path(checkpoint.best_model_path).name == "best.ckpt" and (out / "checkpoints" / "last.ckpt").is_file()
    )
    return checkpoint.best_model_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[L.LightningModule, str]]:
    """A classifier and a segmenter with hyperparameters built as covidseg-train(-segmenter) build them."""
    register_resolvers()
    base = tmp_path_factory.mktemp("ckpts")
    common = ["logger=csv", f"paths.output_dir={base}", f"paths.log_dir={base}/logs"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        sizes = [f"data.image_size={SIZE}", f"model.backbone={BACKBONE}"]
        train = compose("train", overrides=[*common, "callbacks=early_stopping", *sizes])
        segment = compose(
            "train_segmenter", overrides=[*common, f"segmenter.image_size={SIZE}", "trainer.max_epochs=1"]
        )
    data_config = OmegaConf.to_container(train.data, resolve=True)
    data_config.pop("_target_")
    data_config["segmenter"] = OmegaConf.to_container(train.segmenter, resolve=True)
    L.seed_everything(0)
    classifier = instantiate(
        train.model,
        _convert_="all",
        class_names=["normal", "covid"],
        class_weights=[0.8, 1.2],
        data_config=data_config,
    )
    segmenter = instantiate(segment.model, _convert_="all")
    return {
        "classifier": (
            classifier,
            fit(train, classifier, torch.tensor([0, 1]), base / "classifier", background=True),
        ),
        "segmenter": (
            segmenter,
            fit(segment, segmenter, (torch.rand(2, 1, SIZE, SIZE) > 0.5).float(), base / "segmenter"),
        ),
    }


@pytest.mark.parametrize("kind, module_class", [("classifier", Classifier), ("segmenter", Segmenter)])
def test_real_checkpoints_load_safely_with_identical_weights_and_outputs(trained, kind, module_class):
    model, best = trained[kind]
    loaded = load_module(module_class, best, HINT)
    assert dict(loaded.hparams) == dict(model.hparams)
    assert isinstance(loaded.hparams.get("data_config", {}), dict)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k].cpu(), actual[k]) for k in expected)
    x = torch.randn(2, 1, SIZE, SIZE)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = read_checkpoint(Path(best).with_name(name), HINT)
        assert checkpoint["epoch"] == 0 and checkpoint["hyper_parameters"] == dict(model.hparams)


def test_an_instantiator_named_by_a_tampered_checkpoint_is_not_used(trained, tmp_path):
    """Lightning imports and calls hyper_parameters["_instantiator"]; covidseg never writes one."""
    model, best = trained["classifier"]
    checkpoint = read_checkpoint(best, HINT)
    checkpoint["hyper_parameters"].update(
        _instantiator="lightning.pytorch.cli.instantiate_module",
        _class_path="covidseg.models.classifier.Classifier",
    )
    path = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, path)
    loaded = load_module(Classifier, path, HINT)
    assert type(loaded) is Classifier and dict(loaded.hparams) == dict(model.hparams)


def test_a_checkpoint_of_the_other_model_is_a_clear_one_line_error(trained):
    with pytest.raises(UserError, match=r"is not a covidseg Classifier checkpoint \(RuntimeError: ") as err:
        load_module(Classifier, trained["segmenter"][1], HINT)
    assert str(err.value).endswith(HINT) and "\n" not in str(err.value)


# -- files that are not checkpoints ---------------------------------------------------------------------
def test_a_missing_checkpoint_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "nope.ckpt"
    for load in (lambda: read_checkpoint(path, HINT), lambda: load_module(Classifier, path, HINT)):
        with pytest.raises(UserError, match=f"Checkpoint {path} does not exist. {HINT}"):
            load()


@pytest.mark.parametrize("content", ["text", "empty", "tensor", "plain dict"])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "model.ckpt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "plain dict":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_text("" if content == "empty" else "epoch,loss\n0,1.0\n")
    with pytest.raises(UserError, match="is not a covidseg checkpoint") as err:
        read_checkpoint(path, HINT)
    assert str(path) in str(err.value) and HINT in str(err.value)
    with pytest.raises(UserError, match="is not a covidseg Segmenter checkpoint"):
        load_module(Segmenter, path, HINT)
