"""covidseg-train: train one classifier (Hydra; `-m` for sweeps) and write its run directory.

Run directory: .hydra/config.yaml, splits.csv, checkpoints/{best,last}.ckpt (best.ckpt with the operating
point chosen on validation, covidseg.inference.thresholds), metrics.json,
predictions.csv (test split), lung_energy.json + cam_gallery.npz (for covidseg-report), csv/metrics.csv
(per-epoch curves), wandb/ (if enabled).
resume=true with the same hydra.run.dir continues an interrupted run from last.ckpt
(covidseg.runs.resume_plan).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from covidseg.checkpoints import store_operating_point
from covidseg.data.datamodule import CXRDataModule
from covidseg.errors import UserError
from covidseg.explain.job_arrays import write_job_cams
from covidseg.inference.evaluation import evaluate_and_write, evaluate_external
from covidseg.inference.thresholds import choose_run_point, point_keys
from covidseg.masks import area_by_class, images_and_masks, mask_source
from covidseg.models.classifier import Classifier, check_backbone
from covidseg.outputs import layout
from covidseg.runs.fit import fit_and_evaluate
from covidseg.runs.job import hydra_entry, in_multirun, run_dir
from covidseg.runs.objective import check_optimized_metric, objective
from covidseg.runs.resume_plan import check_same_data, checkpoint_to_resume

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """One classifier run, as configured; returns what it wrote to metrics.json."""
    out_dir = run_dir()
    (out_dir / layout.CONFIG_RESOLVED).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    check_backbone(cfg.model.backbone)
    check_optimized_metric(cfg)
    L.seed_everything(cfg.seed, workers=True)
    masks = mask_source(cfg.segmenter, cfg.paths.cache_dir, cfg.data.input)
    datamodule: CXRDataModule = instantiate(cfg.data, masks=masks)
    datamodule.setup("fit")
    resume_from = checkpoint_to_resume(cfg, out_dir)
    if resume_from is not None:  # before splits.csv, the first attempt's, is replaced
        check_same_data(resume_from, datamodule)
    datamodule.write_splits(out_dir / layout.SPLITS)
    mask_area: dict[str, float] = {}  # metrics.json: the masks' lung area per class (covidseg.masks.area)
    if masks is not None:
        images, lung_masks = images_and_masks(masks, datamodule, datamodule.table)
        stats = masks.quality_report(datamodule.table, images, lung_masks, out_dir, seed=datamodule.seed)
        by_class = area_by_class(stats, datamodule.classes[-1])
        if by_class is not None:
            mask_area = by_class.metrics()
            if by_class.warning():
                log.warning("%s", by_class.warning())
    data_config = OmegaConf.to_container(cfg.data, resolve=True)
    data_config.pop("_target_")  # a plain record in the checkpoint, not something to instantiate
    data_config["segmenter"] = OmegaConf.to_container(cfg.segmenter, resolve=True)
    if masks is not None:  # covidseg-predict refuses another segmenter: its masks would differ
        data_config["segmenter"]["sha1"] = masks.ckpt_digest
    # Re-seed: building the mask source (segmented input only) consumed random numbers, and runs that
    # differ only in input must start from the same weights and batch order to be paired by seed.
    L.seed_everything(cfg.seed, workers=True)
    model: Classifier = instantiate(
        cfg.model,
        _convert_="all",
        class_names=datamodule.classes,
        class_weights=datamodule.class_weights(),
        data_config=data_config,
    )
    group = cfg.group or (Path(cfg.paths.output_dir).parent.name if in_multirun() else None)
    tags = [f"backbone={cfg.model.backbone}", f"input={cfg.data.input}", f"seed={cfg.seed}"]

    def evaluate(trainer: L.Trainer, best: str | None, fit_info: dict[str, Any]) -> dict[str, Any]:
        extra = {
            **fit_info,
            "monitor": cfg.callbacks.model_checkpoint.monitor
            if "model_checkpoint" in cfg.callbacks
            else None,
            "train_images_per_second": round(
                datamodule.stats["n_train"]
                * (fit_info["epochs_run"] - (fit_info["resumed_at_epoch"] or 0))
                / fit_info["train_seconds"],
                2,
            ),
            "backbone": cfg.model.backbone,
            "input": cfg.data.input,
            "seed": int(cfg.seed),
            "image_size": int(cfg.data.image_size),
            "group": group,
            "accelerator": type(trainer.accelerator).__name__,
            "recipe": cfg.recipe_name,
            "val/single_class_epochs": model.single_class_epochs,
            "optimized_metric": cfg.get("optimized_metric"),
            **mask_area,
        }
        point = None
        if model.binary:  # the threshold for test and external sets, chosen on validation
            point = choose_run_point(trainer, model, datamodule, best, cfg.get("eval"))
            if best:
                store_operating_point(best, point)
            extra.update(point_keys(point))
        threshold = point["threshold"] if point else None
        if datamodule.external:
            extra.update(evaluate_external(trainer, model, datamodule, out_dir, best, threshold))
        metrics = evaluate_and_write(trainer, model, datamodule, out_dir, best, extra, threshold)
        leave_cams_for_report(cfg, out_dir, model, datamodule, masks)
        return metrics

    metrics = fit_and_evaluate(cfg, model, datamodule, group, tags, evaluate, resume_from)
    if not metrics:  # a non-zero DDP rank
        return metrics
    log.info("metrics: %s", {k: metrics[k] for k in ("test/acc", "test/recall", "test/f1", "test/auroc")})
    log.info("Run directory: %s", out_dir)
    return metrics


def leave_cams_for_report(
    cfg: DictConfig, out_dir: Path, model: Classifier, datamodule: CXRDataModule, masks: Any
) -> None:
    """lung_energy.json and cam_gallery.npz from the tested model, so covidseg-report reloads nothing; raw
    runs measure against the segmenter's masks when one exists, as the report does. A failure only warns:
    the report then computes them itself.

    Args:
        cfg: the job's config (report.energy_images, report.cam_images, segmenter, paths, data.input).
        out_dir: the job's folder.
        model: the classifier with the tested weights.
        datamodule: the job's data, set up.
        masks: the run's MaskSource; None: the segmenter's, if its checkpoint exists.
    """
    wanted = cfg.get("report") or {}
    start = time.perf_counter()
    try:
        lungs = masks or mask_source(cfg.segmenter, cfg.paths.cache_dir, cfg.data.input, optional=True)
        write_job_cams(
            out_dir, model, datamodule, lungs, wanted.get("energy_images", 64), wanted.get("cam_images", 8)
        )
    except (ValueError, RuntimeError, UserError) as err:
        log.warning("No lung energy / CAM gallery arrays for the report (it will compute them): %s", err)
    log.info("Grad-CAM for the report: %.1f s", time.perf_counter() - start)


def train_objective(cfg: DictConfig) -> float | None:
    """What a sweeper sees of a run: its `optimized_metric` (covidseg.runs.objective)."""
    return objective(train(cfg), cfg.get("optimized_metric"))


main = hydra_entry("train", train_objective)

if __name__ == "__main__":
    main()
