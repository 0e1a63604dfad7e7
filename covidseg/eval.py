"""covidseg-eval: test a trained classifier checkpoint on any dataset folder (e.g. another hospital's)."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from covidseg.classification import Classifier, load_classifier
from covidseg.cli import run_dir, run_job
from covidseg.data.datamodule import CXRDataModule
from covidseg.errors import UserError
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.train import test_and_write

log = logging.getLogger(__name__)
register_resolvers()


def evaluation_datamodule(model: Classifier, data: DictConfig, segmenter_ckpt: str | None) -> CXRDataModule:
    """The training run's preprocessing (size, normalisation, input mode) on the data asked for."""
    trained = dict(model.hparams.data_config or {})
    if data.split != "all" and not data.split_file:
        raise UserError(f"data.split={data.split} needs data.split_file (e.g. <train run>/splits.csv).")
    masks = None
    if trained.get("input", "raw") != "raw":
        from covidseg.masks import MaskSource

        segmenter = OmegaConf.create(trained["segmenter"])
        if segmenter_ckpt:
            segmenter.ckpt_path = segmenter_ckpt
        masks = MaskSource.from_config(segmenter, cache_dir=data.cache_dir)
    return CXRDataModule.from_record(
        trained, root=data.root or trained["root"], classes=model.class_names, batch_size=data.batch_size,
        split_file=data.split_file, evaluate_on=data.split, limit=None, on_unknown_label=data.on_unknown_label,
        on_bad_image=data.on_bad_image, cache_dir=data.cache_dir, masks=masks)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    model = load_classifier(cfg.ckpt_path)
    datamodule = evaluation_datamodule(model, cfg.data, cfg.segmenter.ckpt_path)
    datamodule.setup("test")
    trainer: L.Trainer = instantiate(cfg.trainer)
    extra = {
        "ckpt_path": str(cfg.ckpt_path),
        "data_root": str(datamodule.root),
        "backbone": model.hparams.backbone,
        "input": datamodule.input,
        "seed": (model.hparams.data_config or {}).get("seed"),
        "evaluated_split": cfg.data.split,
    }
    metrics = test_and_write(trainer, model, datamodule, run_dir(), None, extra)
    log.info("metrics: %s", {k: metrics[k] for k in ("test/acc", "test/recall", "test/f1", "test/auroc")})
    log.info("Wrote %s", run_dir() / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    run_job(evaluate, cfg)


if __name__ == "__main__":
    main()
