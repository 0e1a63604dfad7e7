"""covidseg-train: train one classifier (Hydra; `-m` for sweeps) and write its run directory.

Run directory: .hydra/config.yaml, splits.csv, checkpoints/{best,last}.ckpt, metrics.json,
predictions.csv (test split), csv/metrics.csv (per-epoch curves), wandb/ (if enabled).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from covidseg.classification import Classifier, check_backbone
from covidseg.cli import RESOLVED_CONFIG, in_multirun, run_dir, run_job
from covidseg.data.datamodule import CXRDataModule
from covidseg.metrics import METRIC_NAMES
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.tracking import finish_wandb

log = logging.getLogger(__name__)
register_resolvers()


def build_mask_source(cfg: DictConfig):
    """Stage 1 for data.input=segmented|lungs_removed; None for raw input."""
    if cfg.data.input == "raw":
        return None
    from covidseg.masks import MaskSource

    return MaskSource.from_config(cfg.segmenter, cache_dir=cfg.paths.cache_dir)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def fit_and_evaluate(cfg: DictConfig, model: L.LightningModule, datamodule: L.LightningDataModule,
                     group: str | None, tags: list[str],
                     evaluate: Callable[[L.Trainer, str | None, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Build loggers, callbacks and trainer from cfg, fit, then `evaluate(trainer, best_ckpt, fit_info)`.

    Shared by the classifier and the segmenter. The W&B run is always finished (failed if this raised).
    Under multi-process training (DDP) only rank 0 evaluates, and returns {} on the other ranks.
    """
    if "wandb" in (cfg.logger or {}):
        cfg.logger.wandb.group = group
        cfg.logger.wandb.tags = [*cfg.tags, *tags]
    loggers = instantiate_all(cfg.logger)
    failed = True
    try:
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=instantiate_all(cfg.callbacks))
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - start
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        fit_info = {
            "best_epoch": int(torch.load(best, map_location="cpu", weights_only=False)["epoch"]) if best else trainer.current_epoch,
            "epochs_run": 1 if trainer.fast_dev_run else trainer.current_epoch,
            "best_ckpt": best,
            "train_seconds": round(seconds, 2),
        }
        if trainer.world_size > 1:
            # Test on one device: under DDP a DistributedSampler would split (and pad) the test set.
            trainer.strategy.barrier()
            rank = trainer.global_rank
            torch.distributed.destroy_process_group()  # else torchmetrics would sync with finished ranks
            if rank != 0:
                failed = False
                return {}
            trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                                logger=False, enable_checkpointing=False, default_root_dir=cfg.trainer.default_root_dir)
        metrics = evaluate(trainer, best or None, fit_info)
        for logger in loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        failed = False
    finally:
        finish_wandb(loggers, failed)
    return metrics


def test_and_write(trainer: L.Trainer, model: Classifier, datamodule: CXRDataModule, out_dir: Path,
                   ckpt_path: str | None, extra: dict[str, Any]) -> dict[str, Any]:
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """One classifier run, as configured; returns what it wrote to metrics.json."""
    out_dir = run_dir()
    (out_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    check_backbone(cfg.model.backbone)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: CXRDataModule = instantiate(cfg.data, masks=build_mask_source(cfg))
    datamodule.setup("fit")
    datamodule.write_splits(out_dir / "splits.csv")
    datamodule.write_mask_report(out_dir)
    data_config = OmegaConf.to_container(cfg.data, resolve=True)
    data_config.pop("_target_")  # a plain record in the checkpoint, not something to instantiate
    data_config["segmenter"] = OmegaConf.to_container(cfg.segmenter, resolve=True)
    # Re-seed: building the mask source (segmented input only) consumed random numbers, and runs that
    # differ only in input must start from the same weights and batch order to be paired by seed.
    L.seed_everything(cfg.seed, workers=True)
    model: Classifier = instantiate(cfg.model, _convert_="all", class_names=datamodule.classes,
                                    class_weights=datamodule.class_weights(), data_config=data_config)
    group = cfg.group or (Path(cfg.paths.output_dir).parent.name if in_multirun() else None)
    tags = [f"backbone={cfg.model.backbone}", f"input={cfg.data.input}", f"seed={cfg.seed}"]

    def evaluate(trainer: L.Trainer, best: str | None, fit_info: dict[str, Any]) -> dict[str, Any]:
        extra = {
            **fit_info,
            "monitor": cfg.callbacks.model_checkpoint.monitor if "model_checkpoint" in cfg.callbacks else None,
            "train_images_per_second": round(datamodule.stats["n_train"] * fit_info["epochs_run"]
                                             / fit_info["train_seconds"], 2),
            "backbone": cfg.model.backbone,
            "input": cfg.data.input,
            "seed": int(cfg.seed),
            "image_size": int(cfg.data.image_size),
            "group": group,
            "accelerator": type(trainer.accelerator).__name__,
        }
        return test_and_write(trainer, model, datamodule, out_dir, best, extra)

    metrics = fit_and_evaluate(cfg, model, datamodule, group, tags, evaluate)
    if not metrics:  # a non-zero DDP rank
        return metrics
    log.info("metrics: %s", {k: metrics[k] for k in ("test/acc", "test/recall", "test/f1", "test/auroc")})
    log.info("Run directory: %s", out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    run_job(train, cfg)


if __name__ == "__main__":
    main()
