"""resume=true's pieces in process: random state, a resumed fit, config differences, the resume plan (the
console script killed and resumed: tests/e2e/test_resume.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from covidseg.checkpoints import read_checkpoint
from covidseg.runs.resume_callback import ResumableState, capture_random_state, restore_random_state
from covidseg.runs.resume_plan import config_differences, finished_metrics, plan_resume


# -- the pieces, in process ------------------------------------------------------------------------------
def test_random_state_survives_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.normal()  # a cached Gaussian is part of NumPy's state
    torch.save({"state": capture_random_state()}, tmp_path / "s.ckpt")
    expected = (torch.rand(3), np.random.normal(size=3), random.random())
    restore_random_state(torch.load(tmp_path / "s.ckpt", weights_only=True)["state"])
    again = (torch.rand(3), np.random.normal(size=3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


class Noisy(Dataset):
    """Every draw source a training can use: torch (shuffle, noise), NumPy and Python's random."""

    def __init__(self):
        self.x = torch.linspace(-1, 1, 48).reshape(24, 2)
        self.y = (self.x.sum(1) > 0).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        noise = torch.randn(2) * 0.1 + float(np.random.uniform(-0.05, 0.05)) + random.uniform(-0.05, 0.05)
        return self.x[i] + noise, self.y[i]


class Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 1))

    def step(self, batch):
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self.net(x).squeeze(1), y)

    def training_step(self, batch, _):
        return self.step(batch)

    def validation_step(self, batch, _):
        self.log("val/loss", self.step(batch))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.5)
        # patience 0 and a big threshold: the plateau step of every epoch changes the learning rate
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, threshold=10.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss"}}

    def train_dataloader(self):
        return DataLoader(Noisy(), batch_size=5, shuffle=True)

    def val_dataloader(self):
        return DataLoader(Noisy(), batch_size=8)


def _fit(folder: Path, max_epochs: int, ckpt_path: Path | None = None) -> Toy:
    L.seed_everything(0)
    model = Toy()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, save_last=True, monitor="val/loss"),
            ResumableState(),
        ],
    )
    trainer.fit(model, ckpt_path=ckpt_path, weights_only=True)
    return model


def test_a_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    whole = _fit(tmp_path / "whole", 4)
    _fit(tmp_path / "cut", 2)  # last.ckpt after epoch 1, as a run killed during epoch 2 leaves it
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a new process draws from anywhere
    resumed = _fit(tmp_path / "cut", 4, ckpt_path=tmp_path / "cut" / "last.ckpt")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lr = [
        read_checkpoint(tmp_path / f / "last.ckpt", "")["lr_schedulers"][0]["_last_lr"]
        for f in ("whole", "cut")
    ]
    assert lr[0] == lr[1] and lr[0][0] < 0.5 / 4  # the plateau scheduler stepped in every epoch


def test_config_differences_name_the_key_and_both_values():
    recorded = {
        "seed": 0,
        "resume": False,
        "model": {"optimizer": {"lr": 0.002}},
        "paths": {"cache_dir": "/a"},
    }
    current = {"seed": 0, "resume": True, "model": {"optimizer": {"lr": 0.01}}, "paths": {"cache_dir": "/b"}}
    assert config_differences(recorded, current) == ["model.optimizer.lr: 0.002 then, 0.01 now"]
    assert config_differences({"a": 1}, {"a": 1, "b": [1]}) == []  # a setting added by a later covidseg
    assert config_differences({"a": 1, "b": {"c": 1}}, {"b": {"c": 2}}) == [
        "a: 1 then, (absent) now",
        "b.c: 1 then, 2 now",
    ]


def test_a_run_started_before_the_operating_point_keys_resumes_with_its_own_segmenter(tmp_path, monkeypatch):
    # no command line: another test's Hydra job config (its overrides) must not be this job's
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    recorded = {"seed": 0, "resume": False, "segmenter": {"ckpt_path": "/old/best.ckpt"}}
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(recorded))
    (tmp_path / "metrics.json").write_text(
        json.dumps({f"test/{m}": 0.5 for m in ("acc", "precision", "recall", "specificity", "f1", "auroc")})
    )
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "resume": True,
            "eval": {"threshold_rule": "youden", "threshold": None},  # keys newer than the run
            "segmenter": {"ckpt_path": "/newest/best.ckpt"},  # the default moved to a newer segmenter
            "callbacks": {"model_checkpoint": {"dirpath": str(tmp_path)}},
        }
    )
    plan = plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=True)
    assert plan is not None and plan.finished is not None
    assert cfg.segmenter.ckpt_path == "/old/best.ckpt"  # the job keeps the segmenter it started with
    cfg.seed = 1
    with pytest.raises(Exception, match=r"seed: 0 then, 1 now"):
        plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=True)


def test_only_a_complete_metrics_json_counts_as_finished(tmp_path):
    assert finished_metrics(tmp_path) is None
    (tmp_path / "metrics.json").write_text('{"test/acc": 0.5')  # cut off while writing
    assert finished_metrics(tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    assert finished_metrics(tmp_path) is None
    complete = {f"test/{m}": 0.5 for m in ("acc", "precision", "recall", "specificity", "f1", "auroc")}
    (tmp_path / "metrics.json").write_text(json.dumps(complete))
    assert finished_metrics(tmp_path) == complete


def test_a_sweep_job_never_begun_starts_from_epoch_0_a_single_run_is_refused(tmp_path):
    cfg = OmegaConf.create({"resume": True, "callbacks": {"model_checkpoint": {"dirpath": str(tmp_path)}}})
    plan = plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=True)
    assert plan is not None and plan.checkpoint is None and plan.finished is None
    with pytest.raises(Exception, match=r"last.ckpt does not exist"):
        plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=False)
    cfg.resume = False
    assert plan_resume(cfg, tmp_path, tmp_path / "config_resolved.yaml", sweep_job=False) is None


def test_the_weighted_samplers_draws_continue_from_a_saved_state(tmp_path):
    from covidseg.data.datamodule import CXRDataModule
    from tests.conftest import make_dataset

    def module() -> CXRDataModule:
        data = make_dataset(tmp_path / "d", {"normal": 30, "covid": 12}, size=32)
        dm = CXRDataModule(
            str(data), image_size=32, batch_size=64, balance="sampler", cache_dir=tmp_path / "c"
        )
        dm.setup("fit")
        return dm

    def order(dm: CXRDataModule) -> list[int]:
        return list(dm.train_dataloader().sampler)

    first = module()
    order(first)  # epoch 0
    state = torch.load(_saved(first.state_dict(), tmp_path), weights_only=True)
    expected = order(first)  # epoch 1
    second = module()
    second.load_state_dict(state)
    assert order(second) == expected != order(module())


def _saved(state: dict, folder: Path) -> Path:
    torch.save(state, folder / "state.pt")
    return folder / "state.pt"
