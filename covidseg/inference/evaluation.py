"""Testing a trained model and writing what a run directory promises: metrics, predictions, overlays."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.datasets import ArrayDataset, model_input
from covidseg.data.mask_sets import set_name
from covidseg.data.segmentation import LungMaskDataModule
from covidseg.errors import UserError
from covidseg.inference.overlays import overlay_grid
from covidseg.inference.segmenter_scores import score_rows, summarize
from covidseg.masks import MaskSource, trained_mask_source
from covidseg.models.classifier import Classifier
from covidseg.models.divergence import check_finite_outputs
from covidseg.models.metrics import METRIC_NAMES
from covidseg.models.segmenter import Segmenter
from covidseg.outputs import layout, write_csv
from covidseg.stats.operating_point import set_metrics

log = logging.getLogger(__name__)


# Manifest columns carried into predictions.csv when a data set has them (per-source breakdowns).
CONTEXT_COLUMNS = ("source",)


def _model_inputs(batch: tuple[torch.Tensor, torch.Tensor], mean: float, std: float) -> torch.Tensor:
    return model_input(batch[0], mean, std)


def class_probabilities(
    trainer: L.Trainer,
    model: Classifier,
    dataset: ArrayDataset,
    mean: float,
    std: float,
    batch_size: int,
    num_workers: int = 0,
    ckpt_path: str | None = None,
) -> np.ndarray:
    """(N, num_classes) class probabilities of a dataset's images by `trainer.predict`, prepared as in
    training.

    The loader is not a data module's (CXRDataModule.predict_dataloader is the test split's, and Lightning
    runs no data-module hook for loaders passed to predict), so its batches are made model inputs here.

    Args:
        trainer: the Lightning trainer that predicts.
        model: the classifier.
        dataset: uint8 images (and targets) as the data module prepares them.
        mean: the normalisation mean of the model's data config.
        std: the normalisation standard deviation.
        batch_size: images per batch.
        num_workers: loader processes.
        ckpt_path: the checkpoint whose weights predict (e.g. best.ckpt); None: `model`'s as they are.
    """
    if len(dataset) == 0:
        return np.zeros((0, len(model.class_names)), np.float32)
    inputs = partial(_model_inputs, mean=mean, std=std)
    loader = DataLoader(dataset, batch_size, num_workers=num_workers, collate_fn=inputs)
    batches = trainer.predict(model, dataloaders=loader, ckpt_path=ckpt_path)
    return torch.cat(batches).float().cpu().numpy()


def evaluate_split(
    trainer: L.Trainer,
    model: Classifier,
    datamodule: CXRDataModule,
    ckpt_path: str | None,
    threshold: float | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Test `model` (from ckpt_path if given) on the datamodule's test split.

    Args:
        trainer: the Lightning trainer that runs the test.
        model: the classifier; its test_results give the probabilities and the confusion matrix.
        datamodule: the data, set up for test.
        ckpt_path: the checkpoint to test (e.g. best.ckpt); None tests `model`'s weights as they are.
        threshold: the operating point (two classes): adds brier, ece, sensitivity / specificity at fixed
            targets and op/<metric> at it (covidseg.stats.operating_point.set_metrics); None adds none.

    Returns:
        the metrics as {<metric>: value} (METRIC_NAMES at 0.5, loss, confusion, n, n_patients, and those
        of `threshold`) and one row per tested image: path, label, patient_id, target, [source],
        prob_<class>...

    Raises:
        UserError: the model's outputs are NaN or infinite.
    """
    scores = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    results = model.test_results()
    table = datamodule.table
    columns = ["path", "label", "patient_id", "target", *(c for c in CONTEXT_COLUMNS if c in table)]
    rows = table[table["split"] == "test"][columns].reset_index(drop=True)
    probs = results["probs"].numpy()
    if len(probs) < len(rows):  # fast_dev_run / limit_test_batches: the loader is unshuffled, so a prefix
        log.warning("Only %d of %d test images were tested (limited test batches)", len(probs), len(rows))
        rows = rows.iloc[: len(probs)].copy()
    check_finite_outputs(probs, list(rows["path"]), f"Checkpoint {ckpt_path}" if ckpt_path else "The model")
    for i, name in enumerate(model.class_names):
        rows[f"prob_{name}"] = probs[:, i]
    metrics: dict[str, Any] = {m: float(scores[f"test/{m}"]) for m in METRIC_NAMES}
    metrics.update(loss=float(scores["test/loss"]), confusion=results["confusion"])
    metrics.update(n=len(rows), n_patients=int(rows["patient_id"].nunique()))
    if threshold is not None and model.binary and len(rows):
        metrics.update(set_metrics(rows["target"], probs[:, 1], threshold))
    return metrics, rows


def evaluate_and_write(
    trainer: L.Trainer,
    model: Classifier,
    datamodule: CXRDataModule,
    out_dir: Path,
    ckpt_path: str | None,
    extra: dict[str, Any],
    threshold: float | None = None,
) -> dict[str, Any]:
    """Test on the datamodule's test split; write metrics.json (test/<metric>, the data's counts, `extra`)
    and predictions.csv (one row per test image).

    Args:
        trainer: the Lightning trainer that runs the test.
        model: the classifier.
        datamodule: the data, set up for test.
        out_dir: the run folder.
        ckpt_path: the checkpoint to test; None tests `model` as it is.
        extra: more keys for metrics.json (e.g. the fit's info, the checkpoint path).
        threshold: the operating point (evaluate_split); None: no test/op/<metric> keys.

    Returns:
        The metrics as written to metrics.json.
    """
    scores, rows = evaluate_split(trainer, model, datamodule, ckpt_path, threshold)
    # n and n_patients are the data's counts (n_test in datamodule.stats), not test/ scores
    metrics: dict[str, Any] = {f"test/{k}": v for k, v in scores.items() if k not in ("n", "n_patients")}
    metrics["classes"] = model.class_names
    metrics.update(datamodule.stats)
    metrics.update(extra)
    write_csv(rows, out_dir / layout.PREDICTIONS)
    (out_dir / layout.METRICS).write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_external(
    trainer: L.Trainer,
    model: Classifier,
    datamodule: CXRDataModule,
    out_dir: Path,
    ckpt_path: str | None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Test on every image of each of `datamodule.external` (a training run's other-hospital sets), as
    `covidseg-eval ckpt_path=<best.ckpt> data.root=<folder>` would; write predictions_<name>.csv and return
    external/<name>/<metric> keys (METRIC_NAMES, confusion, n, n_patients, those of `threshold`) and
    `external_sets`.

    Args:
        trainer: the Lightning trainer that runs the tests.
        model: the classifier.
        datamodule: the training run's data; its masks, batch size and cache serve the external sets too.
        out_dir: the run folder.
        ckpt_path: the checkpoint to test; None tests `model` as it is.
        threshold: the operating point (evaluate_split); None: no op/<metric> keys.
    """
    metrics: dict[str, Any] = {"external_sets": {f.name: str(f.resolve()) for f in datamodule.external}}
    for folder in datamodule.external:
        data = {
            "root": str(folder),
            "batch_size": datamodule.batch_size,
            "on_bad_image": datamodule.on_bad_image,
            "cache_dir": str(datamodule.cache_dir),
        }
        external = evaluation_datamodule(model, data, masks=datamodule.masks)
        external.setup("test")
        scores, rows = evaluate_split(trainer, model, external, ckpt_path, threshold)
        write_csv(rows, out_dir / layout.predictions_file(folder.name))
        metrics.update({f"external/{folder.name}/{k}": v for k, v in scores.items() if k != "loss"})
        log.info("external %s: %s", folder.name, {k: round(scores[k], 4) for k in ("acc", "recall", "auroc")})
    return metrics


def evaluation_datamodule(
    model: Classifier,
    data: Mapping[str, Any],
    segmenter_ckpt: str | None = None,
    masks: MaskSource | None = None,
) -> CXRDataModule:
    """The training run's preprocessing (size, normalisation, input mode) on the data asked for:
    covidseg-eval, a run's external sets and covidseg-predict all build their data this way.

    Args:
        model: the trained classifier; its recorded data config gives the preprocessing.
        data: batch_size and cache_dir, and optionally root (default: the training folder), split (`all`,
            the default, or train/val/test of split_file), on_unknown_label (default drop) and on_bad_image
            (default: the training run's).
        segmenter_ckpt: overrides the path of the segmenter the classifier was trained with.
        masks: the masks to use (a training run's own); None: from that segmenter (a missing or changed one
            is refused).

    Raises:
        UserError: a split other than `all` without split_file, or the segmenter is missing or changed.
    """
    trained = dict(model.hparams.data_config or {})
    split, split_file = data.get("split", "all"), data.get("split_file")
    if split != "all" and not split_file:
        raise UserError(f"data.split={split} needs data.split_file (e.g. <train run>/splits.csv).")
    if masks is None:
        masks = trained_mask_source(
            trained.get("segmenter") or {}, data["cache_dir"], trained.get("input", "raw"), segmenter_ckpt
        )
    return CXRDataModule.from_record(
        trained,
        root=data.get("root") or trained["root"],
        classes=model.class_names,
        batch_size=data["batch_size"],
        split_file=split_file,
        evaluate_on=split,
        limit=None,
        on_unknown_label=data.get("on_unknown_label", "drop"),
        on_bad_image=data.get("on_bad_image") or trained.get("on_bad_image", "error"),
        cache_dir=data["cache_dir"],
        masks=masks,
        external=(),
    )


def evaluate_segmenter_and_write(
    trainer: L.Trainer,
    model: Segmenter,
    datamodule: LungMaskDataModule,
    out_dir: Path,
    ckpt_path: str | None,
    overlays: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Dice, IoU and HD95 on the test split (post-processed masks), overall, per mask set and per source or
    finding (covidseg.inference.segmenter_scores); writes metrics.json, segmentation_scores.csv and
    overlays.png. metrics.json also gets `n_parameters` (the network's) and `ms_per_image`: the wall time
    of the test pass's predictions on the trainer's device divided by the test images (forward pass,
    sigmoid, copy to the CPU and post-processing of each batch; not data loading, the loss or the scores;
    Segmenter.test_predict_seconds).

    Args:
        trainer: the Lightning trainer that runs the test.
        model: the segmenter.
        datamodule: the mask sets, set up for test.
        out_dir: the run folder.
        ckpt_path: the checkpoint to test; None tests `model` as it is.
        overlays: test images drawn in overlays.png, evenly spaced; < 1 writes none.
        extra: more keys for metrics.json.

    Returns:
        The metrics as written to metrics.json.
    """
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    hp = model.hparams
    table = datamodule.table
    rows = score_rows(table[table["split"] == "test"], model.test_results())
    write_csv(rows, out_dir / layout.SEGMENTATION_SCORES)
    metrics = {
        **summarize(rows),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        # Segmenter.test_predict_seconds: forward pass + post-processing, no data loading or scoring.
        "ms_per_image": 1000.0 * model.test_predict_seconds / max(len(rows), 1),
        "n_train": len(datamodule.datasets["train"]),
        "n_val": len(datamodule.datasets["val"]),
        "n_test": len(datamodule.datasets["test"]),
        "arch": hp.arch,
        "encoder": hp.encoder,
        "image_size": hp.image_size,
        "postprocess": dict(model.postprocess_settings),
        "sets": {set_name(r): str(r) for r in datamodule.roots},
        "set_sizes": datamodule.set_sizes(),
        **extra,
    }
    (out_dir / layout.METRICS).write_text(json.dumps(metrics, indent=2))
    test = datamodule.datasets["test"]
    if overlays < 1:
        return metrics
    picks = np.linspace(0, len(test) - 1, num=min(overlays, len(test))).round().astype(int)
    names = list(datamodule.table.loc[datamodule.table["split"] == "test", "image"].iloc[picks])
    images, predicted, truth = overlay_arrays(model, datamodule, picks)
    titles = [Path(n).stem[:18] for n in names]
    overlay_grid(images, predicted, truth, out_dir / layout.OVERLAYS, titles=titles)
    log.info(
        "test/dice %.4f  test/iou %.4f  test/hd95 %.1f px  (%s)",
        metrics["test/dice"],
        metrics["test/iou"],
        metrics["test/hd95"],
        out_dir,
    )
    return metrics


def overlay_arrays(
    model: Segmenter, datamodule: LungMaskDataModule, picks: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """What overlay_grid draws for some test images: the images, the model's post-processed masks and the
    hand-drawn masks.

    Args:
        model: the segmenter.
        datamodule: its mask sets, set up (the test split at the model's size and normalisation).
        picks: indices into the test split.

    Returns:
        (uint8 images, 0/1 predicted masks (N, H, W), 0/1 hand-drawn masks), in the order of `picks`.
    """
    test = datamodule.datasets["test"]
    model.eval()
    with torch.no_grad():
        x = model_input(test.images[picks], datamodule.mean, datamodule.std, model.device)
        predicted = model.predict_masks(x)
    images = [np.asarray(test.images[i]) for i in picks]
    truth = [np.asarray(test.targets[i]) for i in picks]
    return images, predicted, truth
