"""covidseg-train-segmenter: train the lung segmenter; writes checkpoints/, metrics.json, overlays.png."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from covidseg.data.segmentation import LungMaskDataModule
from covidseg.inference.evaluation import evaluate_segmenter_and_write
from covidseg.models.segmenter import Segmenter
from covidseg.outputs import layout
from covidseg.runs.fit import fit_and_evaluate
from covidseg.runs.job import hydra_entry, run_dir


def train_segmenter(cfg: DictConfig) -> dict[str, Any]:
    """covidseg-train-segmenter: fit cfg.model on the mask sets of cfg.data, then test the best checkpoint and
    write metrics and overlays to the run folder.

    Args:
        cfg: the train_segmenter config (seed, data, model, segmenter, trainer, overlays, group).

    Returns:
        The run's metrics (fit_and_evaluate), as written to metrics.json.
    """
    out_dir = run_dir()
    # What covidseg-report reloads the job's data from (its worst-case gallery), as for covidseg-train.
    (out_dir / layout.CONFIG_RESOLVED).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    datamodule: LungMaskDataModule = instantiate(cfg.data)
    datamodule.setup("fit")
    model: Segmenter = instantiate(cfg.model, _convert_="all")
    tags = [f"arch={cfg.segmenter.arch}", f"encoder={cfg.segmenter.encoder}"]

    def evaluate(trainer: L.Trainer, best: str | None, fit_info: dict[str, Any]) -> dict[str, Any]:
        extra = {**fit_info, "seed": int(cfg.seed)}
        return evaluate_segmenter_and_write(trainer, model, datamodule, out_dir, best, cfg.overlays, extra)

    return fit_and_evaluate(cfg, model, datamodule, cfg.group, tags, evaluate)


main = hydra_entry("train_segmenter", train_segmenter)

if __name__ == "__main__":
    main()
