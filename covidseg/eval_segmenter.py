"""covidseg-eval-segmenter: Dice/IoU (and overlays) of a segmenter checkpoint on any image/mask set."""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from covidseg.cli import run_dir, run_job
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.segmentation import LungMaskDataModule, load_segmenter
from covidseg.train_segmenter import test_segmenter

register_resolvers()


def evaluate_segmenter(cfg: DictConfig) -> dict[str, Any]:
    model = load_segmenter(cfg.ckpt_path)
    hp = model.hparams
    datamodule = LungMaskDataModule(root=cfg.data.root, image_size=hp.image_size, batch_size=cfg.data.batch_size,
                                    mean=hp.mean, std=hp.std, cache_dir=cfg.data.cache_dir, evaluate_all=True)
    datamodule.setup("test")
    trainer: L.Trainer = instantiate(cfg.trainer)
    extra = {"ckpt_path": str(cfg.ckpt_path), "data_root": str(cfg.data.root)}
    return test_segmenter(trainer, model, datamodule, run_dir(), None, cfg.overlays, extra)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval_segmenter")
def main(cfg: DictConfig) -> None:
    run_job(evaluate_segmenter, cfg)


if __name__ == "__main__":
    main()
