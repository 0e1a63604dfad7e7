"""Offline starting weights: model.pretrained_file (timm) and segmenter.encoder_weights_file (smp encoder)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from covidseg.errors import UserError
from covidseg.models.classifier import Classifier, load_classifier
from covidseg.models.segmenter import Segmenter, load_segmenter


class Payload:
    """Pickles as a call of `function(*args)`: what a tampered weights file runs on an unrestricted load."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.fixture(scope="module")
def imagenet_like() -> dict[str, torch.Tensor]:
    """What a user downloads elsewhere: a timm resnet18 with 3 input channels and 1000 classes."""
    torch.manual_seed(1)
    return timm.create_model("resnet18", pretrained=False, num_classes=1000, in_chans=3).state_dict()


@pytest.fixture(params=[".pth", ".safetensors"])
def weights_file(request, tmp_path, imagenet_like) -> Path:
    path = tmp_path / f"resnet18{request.param}"
    if request.param == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in imagenet_like.items()}, str(path))
    else:
        torch.save(imagenet_like, path)
    return path


def assert_starts_from(
    state: dict[str, torch.Tensor], file: dict[str, torch.Tensor], prefix: str = ""
) -> None:
    """Every weight of the file but the head equals the model's, and the first convolution is the file's
    summed over its RGB channels (one grayscale input channel)."""
    assert torch.allclose(state[f"{prefix}conv1.weight"], file["conv1.weight"].sum(1, keepdim=True))
    body = [k for k in file if k != "conv1.weight" and not k.startswith("fc.")]
    assert len(body) > 50
    for key in body:
        assert torch.equal(state[prefix + key], file[key]), key


def one_step_checkpoint(model: L.LightningModule, target: torch.Tensor, folder: Path) -> Path:
    """A checkpoint written by Lightning after one optimizer step on 4 random images."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(4, 1, 32, 32), target), batch_size=4))
    trainer.save_checkpoint(folder / "model.ckpt")
    return folder / "model.ckpt"


# -- classifier ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [["normal", "covid"], ["normal", "covid", "pneumonia"]])
def test_a_classifier_starts_from_a_local_timm_weights_file(weights_file, imagenet_like, classes):
    model = Classifier(
        backbone="resnet18", pretrained_file=str(weights_file), in_chans=1, class_names=classes
    )
    assert model.net.conv1.weight.shape == (64, 1, 7, 7)
    assert_starts_from(model.net.state_dict(), imagenet_like)
    outputs = 1 if len(classes) == 2 else len(classes)
    assert model.net.fc.weight.shape == (outputs, 512)  # a new head for the task
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, outputs)


def test_a_missing_pretrained_file_names_the_option(tmp_path):
    with pytest.raises(UserError, match=r"model.pretrained_file=.*nope.pth: no such file"):
        Classifier(pretrained_file=str(tmp_path / "nope.pth"))


def test_weights_of_another_architecture_are_refused(tmp_path, imagenet_like):
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.block0.weight": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match="none of the file's 1 weights"):
        Classifier(pretrained_file=str(foreign))
    misshapen = tmp_path / "misshapen.pth"
    torch.save({**imagenet_like, "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3)}, misshapen)
    with pytest.raises(UserError, match=r"does not fit model\.backbone=resnet18"):
        Classifier(pretrained_file=str(misshapen))


@pytest.mark.parametrize("option", ["classifier", "segmenter"])
def test_a_weights_file_with_code_is_refused_without_running_it(tmp_path, option):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": Payload(os.system, f"touch {marker}")}, path)
    with pytest.raises(UserError, match="will not unpickle"):
        if option == "classifier":
            Classifier(pretrained_file=str(path))
        else:
            Segmenter(encoder_weights_file=str(path))
    assert not marker.exists()


def test_a_checkpoint_loads_without_the_starting_weights_file(tmp_path, imagenet_like):
    """Evaluation needs only the checkpoint: the file may be gone (or on another machine)."""
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_like, path)
    model = Classifier(pretrained_file=str(path))
    checkpoint = one_step_checkpoint(model, torch.tensor([0, 1, 0, 1]), tmp_path)
    path.unlink()
    loaded = load_classifier(checkpoint)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# -- segmenter encoder --------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder, prefix", [("resnet18", ""), ("tu-resnet18", "model.")])
def test_a_segmenter_encoder_starts_from_a_local_weights_file(weights_file, imagenet_like, encoder, prefix):
    model = Segmenter(encoder=encoder, encoder_weights_file=str(weights_file), image_size=64)
    assert_starts_from(model.net.encoder.state_dict(), imagenet_like, prefix)
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_the_encoder_load_reports_what_did_not_match(tmp_path, imagenet_like, caplog):
    partial = {k: v for k, v in imagenet_like.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": partial}, path)  # a wrapped state dict loads too
    model = Segmenter(encoder_weights_file=str(path), image_size=64)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "weights keep their random start (not in the file): layer4." in messages
    assert "2 weights of the file are not used: fc.bias, fc.weight" in messages
    assert torch.equal(model.net.encoder.layer3[0].conv1.weight, imagenet_like["layer3.0.conv1.weight"])


def test_bad_encoder_weights_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"segmenter.encoder_weights_file=.*nope.pth: no such file"):
        Segmenter(encoder_weights_file=str(tmp_path / "nope.pth"))
    foreign = tmp_path / "foreign.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match=r"segmenter\.encoder_weights_file: none of the file's 1 weights"):
        Segmenter(encoder_weights_file=str(foreign))
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(UserError, match="is not a weights file"):
        Segmenter(encoder_weights_file=str(text))
    with pytest.raises(UserError, match=r"set segmenter\.encoder_weights=null"):
        Segmenter(encoder_weights="imagenet", encoder_weights_file=str(foreign))


def test_a_segmenter_checkpoint_loads_without_the_encoder_weights_file(tmp_path, imagenet_like):
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_like, path)
    model = Segmenter(encoder_weights_file=str(path), image_size=32)
    checkpoint = one_step_checkpoint(model, (torch.rand(4, 1, 32, 32) > 0.5).float(), tmp_path)
    path.unlink()
    loaded = load_segmenter(checkpoint)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
