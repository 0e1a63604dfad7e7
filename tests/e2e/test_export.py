"""covidseg-export: the exported networks reproduce PyTorch in onnxruntime, and preprocessing.json says how
to build their inputs from image files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from covidseg.data.datasets import model_input
from covidseg.data.images import decode
from covidseg.data.intensity import equalize
from covidseg.data.transforms import apply_masks, resize_mask
from covidseg.deploy.networks import load_torchscript, onnx_session, run_onnx
from covidseg.inference.evaluation import evaluation_datamodule
from covidseg.models.classifier import load_classifier
from covidseg.models.segmenter import load_segmenter, postprocess
from covidseg.paths import cache_dir
from tests.conftest import run_cli, run_ok

TOLERANCE = 1e-4  # largest absolute difference allowed between PyTorch's and an exported network's output
N_IMAGES = 8  # real test images compared per checkpoint


def train_and_export(base: Path, *overrides: str) -> tuple[Path, Path]:
    run, export = base / "run", base / "export"
    run_ok("covidseg-train", "debug=tiny", "logger=csv", *overrides, f"hydra.run.dir={run}")
    run_ok("covidseg-export", f"ckpt_path={run}/checkpoints/best.ckpt", f"out_dir={export}")
    return run, export


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory, covid_cxr) -> tuple[Path, Path]:
    """Three classes (softmax output) with CLAHE: the raw-input pipeline's options."""
    base = tmp_path_factory.mktemp("export_raw")
    return train_and_export(base, "data=covid_cxr_3class", "data.equalize=clahe")


@pytest.fixture(scope="module")
def segmented_export(tmp_path_factory, tiny_segmenter, covid_cxr) -> tuple[Path, Path]:
    """Two classes (one logit) on lung-masked images cropped to the lungs: segmenter exported too."""
    base = tmp_path_factory.mktemp("export_segmented")
    return train_and_export(
        base,
        "data.input=segmented",
        "data.crop_to_lungs=true",
        f"segmenter.ckpt_path={tiny_segmenter}/checkpoints/best.ckpt",
    )


@pytest.fixture(params=["raw", "segmented"])
def exported(request) -> tuple[Path, Path]:
    return request.getfixturevalue(f"{request.param}_export")


def real_test_images(run: Path):
    """The first N_IMAGES test images of a run as its data layer preprocesses them, and their rows."""
    model = load_classifier(run / "checkpoints" / "best.ckpt").eval()
    data = OmegaConf.create(
        {
            "root": None,
            "split_file": str(run / "splits.csv"),
            "split": "test",
            "batch_size": 16,
            "on_unknown_label": "drop",
            "on_bad_image": "error",
            "cache_dir": str(cache_dir()),
        }
    )
    datamodule = evaluation_datamodule(model, data)
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    x = model_input(test.images[np.arange(N_IMAGES)], datamodule.mean, datamodule.std)
    rows = datamodule.table[datamodule.table["split"] == "test"].reset_index(drop=True).iloc[:N_IMAGES]
    return model, x, rows


def probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    """Class probabilities from the exported classifier's logits, as preprocessing.json says."""
    if activation == "sigmoid":
        p = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
        return np.stack([1 - p, p], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.mark.slow
def test_exported_classifier_matches_pytorch_on_real_test_images(exported):
    run, export = exported
    record = json.loads((export / "preprocessing.json").read_text())
    model, x, rows = real_test_images(run)
    with torch.no_grad():
        expected = model.net(x).numpy()
    onnx_out = run_onnx(onnx_session(export / record["classifier"]["onnx"]), x)
    assert onnx_out.shape == expected.shape == (N_IMAGES, 1 if len(record["classes"]) == 2 else 3)
    assert np.abs(onnx_out - expected).max() < TOLERANCE
    with torch.no_grad():
        scripted = load_torchscript(export / record["classifier"]["torchscript"])(x).numpy()
    assert np.abs(scripted - expected).max() < TOLERANCE
    # The output rule in preprocessing.json gives the probabilities the training run wrote for these images.
    written = pd.read_csv(run / "predictions.csv").set_index("path").loc[list(rows["path"])]
    probs = probabilities(onnx_out, record["output"]["activation"])
    assert np.abs(probs - written[[f"prob_{c}" for c in record["classes"]]].to_numpy()).max() < TOLERANCE


@pytest.mark.slow
def test_exported_segmenter_matches_pytorch_on_real_images(segmented_export):
    run, export = segmented_export
    segmenter = json.loads((export / "preprocessing.json").read_text())["segmenter"]
    _, _, rows = real_test_images(run)
    size, mean, std = segmenter["image_size"], segmenter["mean"], segmenter["std"]
    images = np.stack([decode(f, size) for f in rows["file"]]).astype(np.float32)
    x = torch.from_numpy((images[:, None] / 255.0 - mean) / std).float()
    model = load_segmenter(segmenter["checkpoint"]).eval()
    with torch.no_grad():
        expected = model.net(x).numpy()
        scripted = load_torchscript(export / segmenter["torchscript"])(x).numpy()
    onnx_out = run_onnx(onnx_session(export / segmenter["onnx"]), x)
    assert onnx_out.shape == expected.shape == (N_IMAGES, 1, size, size)
    assert np.abs(onnx_out - expected).max() < TOLERANCE
    assert np.abs(scripted - expected).max() < TOLERANCE


def inputs_from_record(record: dict, files: list[str], export: Path) -> np.ndarray:
    """The classifier's input built from image files with only preprocessing.json's values and the exported
    segmenter (onnxruntime), as a deployer would."""
    pre = record["preprocessing"]
    images = np.stack(
        [equalize(decode(f, pre["load_size"]), pre["equalize"], pre["clahe_clip"]) for f in files]
    )
    if pre["input_mode"] != "raw":
        seg = record["segmenter"]
        plain = np.stack([decode(f, seg["image_size"]) for f in files]).astype(np.float32)
        logits = run_onnx(
            onnx_session(export / seg["onnx"]), (plain[:, None] / 255.0 - seg["mean"]) / seg["std"]
        )
        probs = 1 / (1 + np.exp(-logits[:, 0]))
        masks = np.stack([resize_mask(postprocess(p, **seg["postprocess"]), pre["load_size"]) for p in probs])
        images = apply_masks(
            images,
            masks,
            pre["input_mode"],
            pre["crop_to_lungs"],
            pre["crop_margin"],
            background=pre["background"],
            out_size=pre["image_size"],
        )
    return ((images[:, None].astype(np.float32) / 255.0 - pre["mean"]) / pre["std"]).astype(np.float32)


@pytest.mark.slow
def test_preprocessing_json_rebuilds_the_data_layers_inputs(exported):
    run, export = exported
    record = json.loads((export / "preprocessing.json").read_text())
    _, x, rows = real_test_images(run)
    rebuilt = inputs_from_record(record, list(rows["file"]), export)
    assert rebuilt.shape == tuple(x.shape)
    # Masks from the exported segmenter may flip a pixel where PyTorch's probability sits at the threshold.
    same = np.isclose(rebuilt, x.numpy(), atol=1e-6)
    assert same.mean() > 0.999 if record["preprocessing"]["input_mode"] != "raw" else same.all()


@pytest.mark.slow
def test_a_checkpoint_that_is_not_a_classifier_exits_2_naming_it(tiny_segmenter, tmp_path):
    # A real process: covidseg-export's exit code as a shell sees it.
    ckpt = tiny_segmenter / "checkpoints" / "best.ckpt"
    result = run_cli("covidseg-export", f"ckpt_path={ckpt}", f"out_dir={tmp_path}", check=False)
    assert result.returncode == 2
    assert f"{ckpt} is not a covidseg Classifier checkpoint" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
def test_a_missing_segmenter_exits_2_before_anything_is_written(segmented_export, tmp_path, cli_refused):
    run, _ = segmented_export
    missing = tmp_path / "moved" / "best.ckpt"
    cli_refused(
        "covidseg-export",
        f"ckpt_path={run}/checkpoints/best.ckpt",
        f"segmenter.ckpt_path={missing}",
        f"out_dir={tmp_path / 'out'}",
        expected=re.escape(f"{missing} does not exist"),
    )
    assert not list((tmp_path / "out").glob("*"))
