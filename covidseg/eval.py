"""covidseg-eval: test a trained classifier checkpoint on any dataset folder (e.g. another hospital's)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from covidseg.inference.evaluation import evaluate_and_write, evaluation_datamodule
from covidseg.inference.thresholds import eval_point, point_keys
from covidseg.models.classifier import load_classifier
from covidseg.outputs import layout
from covidseg.runs.job import hydra_entry, run_dir

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """covidseg-eval: test the classifier cfg.ckpt_path on cfg.data (split cfg.data.split), preprocessed as
    its checkpoint records; writes metrics.json and predictions.csv to the run folder. The threshold
    metrics test/op/<metric> are at the checkpoint's operating point, or at eval.threshold when given.

    Args:
        cfg: the eval config (ckpt_path, data, segmenter.ckpt_path, eval.threshold, trainer).

    Returns:
        The test metrics, as written to metrics.json.
    """
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
    point = eval_point(model, cfg.get("eval"))
    extra.update(point_keys(point))
    threshold = point["threshold"] if point else None
    metrics = evaluate_and_write(trainer, model, datamodule, run_dir(), None, extra, threshold)
    log.info("metrics: %s", {k: metrics[k] for k in ("test/acc", "test/recall", "test/f1", "test/auroc")})
    log.info("Wrote %s", run_dir() / layout.METRICS)
    return metrics


main = hydra_entry("eval", evaluate)

if __name__ == "__main__":
    main()
