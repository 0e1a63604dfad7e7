"""Testing a trained model and writing what a run directory promises: metrics, predictions, overlays."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.lung_masks import LungMaskDataModule
from covidseg.errors import UserError
from covidseg.masks import mask_source
from covidseg.metrics import METRIC_NAMES
from covidseg.models.classifier import Classifier
from covidseg.models.segmenter import Segmenter
from covidseg.plots import overlay_grid

log = logging.getLogger(__name__)


def test_and_write(
    trainer: L.Trainer,
    model: Classifier,
    datamodule: CXRDataModule,
    out_dir: Path,
    ckpt_path: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Test `model` (from ckpt_path if given) on the datamodule's test split; write metrics.json and
    predictions.csv (one row per test image: path, label, patient_id, target, prob_<class>...)."""
    scores = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    results = model.test_results()
    metrics: dict[str, Any] = {f"test/{m}": float(scores[f"test/{m}"]) for m in METRIC_NAMES}
    metrics["test/loss"] = float(scores["test/loss"])
    metrics["test/confusion"] = results["confusion"]
    metrics["classes"] = model.class_names
    metrics.update(datamodule.stats)
    metrics.update(extra)
    table = datamodule.table
    rows = table[table["split"] == "test"][["path", "label", "patient_id", "target"]].reset_index(drop=True)
    probs = results["probs"].numpy()
    if len(probs) < len(rows):  # fast_dev_run / limit_test_batches: the loader is unshuffled, so a prefix
        log.warning("Only %d of %d test images were tested (limited test batches)", len(probs), len(rows))
        rows = rows.iloc[: len(probs)].copy()
    for i, name in enumerate(model.class_names):
        rows[f"prob_{name}"] = probs[:, i]
    rows.to_csv(out_dir / "predictions.csv", index=False)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluation_datamodule(model: Classifier, data: DictConfig, segmenter_ckpt: str | None) -> CXRDataModule:
    """The training run's preprocessing (size, normalisation, input mode) on the data asked for."""
    trained = dict(model.hparams.data_config or {})
    if data.split != "all" and not data.split_file:
        raise UserError(f"data.split={data.split} needs data.split_file (e.g. <train run>/splits.csv).")
    masks = mask_source(
        trained.get("segmenter") or {}, data.cache_dir, trained.get("input", "raw"), segmenter_ckpt
    )
    return CXRDataModule.from_record(
        trained,
        root=data.root or trained["root"],
        classes=model.class_names,
        batch_size=data.batch_size,
        split_file=data.split_file,
        evaluate_on=data.split,
        limit=None,
        on_unknown_label=data.on_unknown_label,
        on_bad_image=data.on_bad_image,
        cache_dir=data.cache_dir,
        masks=masks,
    )


def test_segmenter(
    trainer: L.Trainer,
    model: Segmenter,
    datamodule: LungMaskDataModule,
    out_dir: Path,
    ckpt_path: str | None,
    overlays: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Dice/IoU on the test split (post-processed masks), metrics.json and overlays.png."""
    scores = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    hp = model.hparams
    metrics = {
        "test/dice": float(scores["test/dice"]),
        "test/iou": float(scores["test/iou"]),
        "n_train": len(datamodule.datasets["train"]),
        "n_val": len(datamodule.datasets["val"]),
        "n_test": len(datamodule.datasets["test"]),
        "arch": hp.arch,
        "encoder": hp.encoder,
        "image_size": hp.image_size,
        "postprocess": dict(model.postprocess_settings),
        **extra,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    test = datamodule.datasets["test"]
    if overlays < 1:
        return metrics
    picks = np.linspace(0, len(test) - 1, num=min(overlays, len(test))).round().astype(int)
    model.eval()
    with torch.no_grad():
        x = torch.stack([test[i][0] for i in picks]).to(model.device)
        predicted = model.predict_masks(x)
    images = [test.images[i, 0].numpy() for i in picks]
    truth = [test.targets[i, 0].numpy() for i in picks]
    names = list(datamodule.table.loc[datamodule.table["split"] == "test", "image"].iloc[picks])
    overlay_grid(
        images, predicted, truth, out_dir / "overlays.png", titles=[Path(n).stem[:18] for n in names]
    )
    log.info("test/dice %.4f  test/iou %.4f  (%s)", metrics["test/dice"], metrics["test/iou"], out_dir)
    return metrics
