"""covidseg-train-segmenter: train the lung segmenter; writes checkpoints/, metrics.json, overlays.png."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from covidseg.cli import run_dir, run_job
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.segmentation import LungMaskDataModule, Segmenter, overlay_grid
from covidseg.train import fit_and_evaluate

log = logging.getLogger(__name__)
register_resolvers()


def test_segmenter(trainer: L.Trainer, model: Segmenter, datamodule: LungMaskDataModule, out_dir: Path,
                   ckpt_path: str | None, overlays: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Dice/IoU on the test split (post-processed masks), metrics.json and overlays.png."""
    scores = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    hp = model.hparams
    metrics = {"test/dice": float(scores["test/dice"]), "test/iou": float(scores["test/iou"]),
               "n_train": len(datamodule.datasets["train"]), "n_val": len(datamodule.datasets["val"]),
               "n_test": len(datamodule.datasets["test"]), "arch": hp.arch, "encoder": hp.encoder,
               "image_size": hp.image_size, "postprocess": dict(model.postprocess_settings), **extra}
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
    truth = [test.masks[i, 0].numpy() for i in picks]
    names = list(datamodule.table.loc[datamodule.table["split"] == "test", "image"].iloc[picks])
    overlay_grid(images, predicted, truth, out_dir / "overlays.png", titles=[Path(n).stem[:18] for n in names])
    log.info("test/dice %.4f  test/iou %.4f  (%s)", metrics["test/dice"], metrics["test/iou"], out_dir)
    return metrics


def train_segmenter(cfg: DictConfig) -> dict[str, Any]:
    out_dir = run_dir()
    L.seed_everything(cfg.seed, workers=True)
    datamodule: LungMaskDataModule = instantiate(cfg.data)
    datamodule.setup("fit")
    model: Segmenter = instantiate(cfg.model, _convert_="all")
    tags = [f"arch={cfg.segmenter.arch}", f"encoder={cfg.segmenter.encoder}"]

    def evaluate(trainer: L.Trainer, best: str | None, fit_info: dict[str, Any]) -> dict[str, Any]:
        return test_segmenter(trainer, model, datamodule, out_dir, best, cfg.overlays, {**fit_info, "seed": int(cfg.seed)})

    metrics = fit_and_evaluate(cfg, model, datamodule, cfg.group, tags, evaluate)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_segmenter")
def main(cfg: DictConfig) -> None:
    run_job(train_segmenter, cfg)


if __name__ == "__main__":
    main()
