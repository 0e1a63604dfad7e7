"""data.on_device: batches indexed from arrays kept on the device equal the DataLoader's; so does a fit."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.device_batches import DeviceBatches, array_bytes, fits_on_device
from covidseg.models.classifier import Classifier
from tests.conftest import make_dataset


def module(data, tmp_path, on_device: bool, **kw) -> CXRDataModule:
    dm = CXRDataModule(
        str(data), image_size=32, batch_size=8, cache_dir=str(tmp_path / "cache"), on_device=on_device, **kw
    )
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    return dm


def batches(dm: CXRDataModule, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    return [(x.clone(), y.clone()) for x, y in dm.train_dataloader()]


@pytest.mark.parametrize("balance", ["weighted_loss", "sampler"])
def test_device_batches_are_the_dataloaders_batches(tmp_path, balance):
    data = make_dataset(tmp_path / "d", {"normal": 30, "covid": 12})
    loader, device = (module(data, tmp_path, on, balance=balance) for on in (False, True))
    assert isinstance(device.train_dataloader(), DeviceBatches)
    assert not isinstance(loader.train_dataloader(), DeviceBatches)
    for epoch in range(2):  # the sampler's own generator (balance=sampler) moves on between epochs
        expected = batches(loader, epoch)
        state = torch.get_rng_state()
        got = batches(device, epoch)
        assert torch.equal(torch.get_rng_state(), state)  # the same draws from the global generator
        assert len(expected) == len(got) == len(loader.train_dataloader())
        for (x0, y0), (x1, y1) in zip(expected, got):
            assert x0.dtype == x1.dtype == torch.uint8 and torch.equal(x0, x1) and torch.equal(y0, y1)
    # Validation keeps its order.
    val = [y for _, y in device.val_dataloader()]
    assert torch.equal(torch.cat(val), device.datasets["val"].targets)


def fitted(data, tmp_path, on_device: bool) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    dm = CXRDataModule(
        str(data), image_size=32, batch_size=8, cache_dir=str(tmp_path / "cache"), on_device=on_device
    )
    model = Classifier(backbone="test_resnet")
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, deterministic=True,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_fit_from_device_batches_equals_one_from_the_dataloader(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 12})
    loaded, kept = fitted(data, tmp_path, False), fitted(data, tmp_path, True)
    assert loaded.keys() == kept.keys()
    assert all(torch.equal(loaded[k], kept[k]) for k in loaded)
    start = Classifier(backbone="test_resnet").state_dict()
    assert not torch.equal(start["net.conv1.0.weight"], kept["net.conv1.0.weight"])  # it did train


def test_only_what_fits_in_a_share_of_free_gpu_memory_stays_there(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 12, "covid": 12})
    dm = module(data, tmp_path, on_device=False)
    assert array_bytes(list(dm.datasets.values())) == 24 * 32 * 32
    assert not fits_on_device(list(dm.datasets.values()), torch.device("cpu"))
    dm.on_device = "auto"
    assert not isinstance(dm.train_dataloader(), DeviceBatches)  # auto: never on a CPU
