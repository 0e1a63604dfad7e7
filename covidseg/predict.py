"""covidseg-predict: class probabilities of new images from a trained classifier (no labels needed).

covidseg-predict ckpt_path=<train run>/checkpoints/best.ckpt inputs=<file | folder | glob | csv> [cam=true]
    [cam_class=<class>|predicted] [aggregate=patient aggregate_by=mean|max]

Run directory: predictions.csv (path, prob_<class>..., predicted, threshold, threshold_rule, [cam], error,
then the DICOM identifiers and the input CSV's other columns: covidseg.inference.prediction_table; the
threshold is the operating point stored in the checkpoint, 0.5 for checkpoints from before), with
aggregate=patient patient_predictions.csv, and with cam=true cam/<row>_<name>.png per image. Unreadable files
get a row with the reason in `error`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import Progress

from covidseg import __version__
from covidseg.data.datamodule import CXRDataModule
from covidseg.data.datasets import ArrayDataset, model_input
from covidseg.data.images import ImageCache
from covidseg.data.transforms import apply_masks, lung_box
from covidseg.errors import UserError
from covidseg.explain.gradcam import cam_maps
from covidseg.inference.evaluation import class_probabilities
from covidseg.inference.overlays import RESEARCH_USE, save_cam_overlay
from covidseg.inference.prediction import (
    cam_label,
    cam_target,
    check_classifier_checkpoint,
    collect_inputs,
    input_table,
    overlay_title,
    prediction_datamodule,
    prediction_rows,
)
from covidseg.inference.prediction_table import (
    PATIENT_COLUMN,
    check_aggregate,
    patient_rows,
    with_reader_columns,
)
from covidseg.masks import images_and_masks
from covidseg.models.classifier import Classifier, load_classifier
from covidseg.models.divergence import check_finite_outputs
from covidseg.outputs import layout, write_csv
from covidseg.runs.job import hydra_entry, run_dir

log = logging.getLogger(__name__)


class _Advance(L.Callback):
    """Moves the progress bar by each predicted batch."""

    def __init__(self, progress: Progress, task: Any):
        self.progress, self.task = progress, task

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.progress.advance(self.task, len(outputs))


def _overlays(
    model: Classifier,
    datamodule: CXRDataModule,
    table: pd.DataFrame,
    dataset: ArrayDataset,
    rows: pd.DataFrame,
    cfg: DictConfig,
    device: torch.device,
) -> list[str | None]:
    """Write one overlay per readable file of a chunk; their paths (relative to the run dir), None else.

    Each is drawn at its file's own width:height (read from the image cache's index, not decoded again),
    with the Grad-CAM of cam_class (covidseg.inference.prediction.cam_target) placed where the network's
    input came from: the whole image, or its lung crop for crop_to_lungs."""
    out, names = run_dir() / "cam", [None] * len(rows)
    out.mkdir(exist_ok=True)
    readable = np.flatnonzero(table["error"].isna().to_numpy())
    if not len(readable):
        return names
    classes = list(model.class_names)
    target = cam_target(cfg.cam_class, classes)
    sizes = ImageCache(datamodule.cache_dir, datamodule.load_size).source_sizes(
        list(table["file"].iloc[readable])
    )
    if datamodule.masks is not None:
        images, lungs = images_and_masks(datamodule.masks, datamodule, table.iloc[readable])
    else:
        images, lungs = dataset.images, None  # raw input: what the network saw is the image
    footer = f"{RESEARCH_USE}  covidseg {__version__}, {Path(cfg.ckpt_path).name}"
    model.to(device)
    for start in range(0, len(readable), cfg.batch_size):
        batch = range(start, min(start + cfg.batch_size, len(readable)))
        x = model_input(dataset.images[np.asarray(batch)], datamodule.mean, datamodule.std)
        cams = cam_maps(model.net, x, target_class=target, method=cfg.cam_method, binary=model.binary)
        for i, cam in zip(batch, cams):
            row = rows.iloc[readable[i]]
            image, lung, box = np.asarray(images[i]), None, None
            seen = image
            if lungs is not None:
                lung = np.asarray(lungs[i])
                background = datamodule.masks.background
                seen = apply_masks(image[None], lung[None], datamodule.input, background=background)[0]
                box = lung_box(lung, datamodule.crop_margin) if datamodule.crop_to_lungs else None
            name = f"cam/{row.name:05d}_{Path(row['path']).stem[:60]}.png"
            save_cam_overlay(
                run_dir() / name,
                image,
                seen,
                cam,
                sizes[i],
                overlay_title(row, classes),
                cam_label(target, row["predicted"], classes, cfg.cam_method),
                lung_mask=lung,
                cam_box=box,
                footer=footer,
            )
            names[readable[i]] = name
    return names


def predict(cfg: DictConfig) -> dict[str, Any]:
    """predictions.csv (and overlays) for every file `inputs` names; returns a summary of the run."""
    out_dir = run_dir()
    shutil.rmtree(out_dir / "cam", ignore_errors=True)  # a re-run into this folder: no stale overlays
    check_classifier_checkpoint(cfg.ckpt_path)
    model = load_classifier(cfg.ckpt_path).eval()
    datamodule = prediction_datamodule(model, cfg.cache_dir, cfg.batch_size, cfg.segmenter.ckpt_path)
    point = model.decision_point()  # the threshold chosen on validation, stored in the checkpoint
    files, shown = collect_inputs(str(cfg.inputs))

    inputs = input_table(str(cfg.inputs))  # the CSV's own columns, kept in predictions.csv
    check_aggregate(cfg.aggregate, cfg.aggregate_by, inputs, str(cfg.inputs))
    cam_target(cfg.cam_class, list(model.class_names))  # a class it does not have stops the run at once
    log.info("Predicting %d file(s) with %s (input: %s)", len(files), cfg.ckpt_path, datamodule.input)
    parts = []
    with Progress(transient=False) as progress:
        task = progress.add_task("Predicting", total=len(files))
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[_Advance(progress, task)])
        for start in range(0, len(files), cfg.chunk_size):
            chunk = slice(start, start + cfg.chunk_size)
            table, dataset = datamodule.prediction_inputs(files[chunk])
            table.index += start
            progress.advance(task, int(table["error"].notna().sum()))
            probs = class_probabilities(
                trainer, model, dataset, datamodule.mean, datamodule.std, cfg.batch_size, cfg.num_workers
            )
            readable = list(table.loc[table["error"].isna(), "file"])
            check_finite_outputs(probs, readable, f"Checkpoint {cfg.ckpt_path}")
            rows = prediction_rows(shown[chunk], table, probs, model.class_names, point)
            rows = rows.set_index(table.index)
            if cfg.cam:
                device = trainer.strategy.root_device
                rows.insert(
                    len(rows.columns) - 1,
                    "cam",
                    _overlays(model, datamodule, table, dataset, rows, cfg, device),
                )
            parts.append(rows)
    predictions = pd.concat(parts)
    write_csv(with_reader_columns(predictions, files, inputs), out_dir / layout.PREDICTIONS)
    if cfg.aggregate == "patient":
        patients = patient_rows(
            predictions, list(inputs[PATIENT_COLUMN]), model.class_names, cfg.aggregate_by
        )
        write_csv(patients, out_dir / layout.PATIENT_PREDICTIONS)
        log.info(
            "%d patient(s) (%s probability of their images): %s",
            len(patients),
            cfg.aggregate_by,
            out_dir / layout.PATIENT_PREDICTIONS,
        )
    errors = predictions["error"].notna()
    if errors.all():
        raise UserError(
            f"None of the {len(files)} file(s) from inputs={cfg.inputs} is a readable image, e.g. "
            f"{predictions['error'].iloc[0]} (each file's problem is in {out_dir / 'predictions.csv'})"
        )
    if errors.any():
        log.warning(
            "%d of %d file(s) could not be read and were skipped (see the error column)",
            errors.sum(),
            len(files),
        )
    counts = predictions.loc[~errors, "predicted"].value_counts().to_dict()
    log.info("Predicted %s; wrote %s", counts, out_dir / layout.PREDICTIONS)
    return {"n": len(files), "n_errors": int(errors.sum()), "predicted": counts}


main = hydra_entry("predict", predict)

if __name__ == "__main__":
    main()
