"""covidseg-eval-segmenter: Dice/IoU/HD95 (per set, per source or finding) and overlays of a segmenter
checkpoint on any image/mask set(s)."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from covidseg.data.segmentation import LungMaskDataModule
from covidseg.inference.evaluation import evaluate_segmenter_and_write
from covidseg.models.segmenter import load_segmenter
from covidseg.runs.job import hydra_entry, run_dir


def evaluate_segmenter(cfg: DictConfig) -> dict[str, Any]:
    """covidseg-eval-segmenter: test the segmenter cfg.ckpt_path on every image of the mask sets of cfg.data,
    at the checkpoint's own size and normalisation; writes metrics and overlays to the run folder.

    Args:
        cfg: the eval_segmenter config (ckpt_path, data, trainer, overlays).

    Returns:
        The test metrics, as written to metrics.json.
    """
    model = load_segmenter(cfg.ckpt_path)
    hp = model.hparams
    datamodule = LungMaskDataModule(
        root=cfg.data.root,
        roots=cfg.data.roots,
        image_size=hp.image_size,
        batch_size=cfg.data.batch_size,
        mean=hp.mean,
        std=hp.std,
        cache_dir=cfg.data.cache_dir,
        evaluate_all=True,
    )
    datamodule.setup("test")
    trainer: L.Trainer = instantiate(cfg.trainer)
    extra = {"ckpt_path": str(cfg.ckpt_path), "data_root": ",".join(str(r) for r in datamodule.roots)}
    return evaluate_segmenter_and_write(trainer, model, datamodule, run_dir(), None, cfg.overlays, extra)


main = hydra_entry("eval_segmenter", evaluate_segmenter)

if __name__ == "__main__":
    main()
