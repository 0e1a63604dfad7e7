"""The segmenter report's figures: the per-image Dice distribution of every model and population, and the
worst cases of a model drawn over their images (reloaded from each job's best.ckpt and its data)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf

from covidseg.data.segmentation import LungMaskDataModule
from covidseg.errors import UserError
from covidseg.inference.evaluation import overlay_arrays
from covidseg.inference.overlays import overlay_grid, pyplot
from covidseg.models.segmenter import Segmenter, load_segmenter
from covidseg.outputs import layout
from covidseg.paths import register_resolvers

log = logging.getLogger("covidseg.report")


def plot_dice_distribution(tables: dict[str, pd.DataFrame], path: Path, columns: int = 3) -> None:
    """One panel per population: a box plot of the per-image Dice of each model, the images as points.

    Args:
        tables: population label -> its table (report.segmenter.population_table: model, dice_per_image).
        path: the PNG written.
        columns: panels per row.
    """
    plt = pyplot()
    n = len(tables)
    cols = min(columns, n)
    rows = -(-n // cols)
    width = max(4.0, 0.9 * max(len(t) for t in tables.values()) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.8 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    rng = np.random.default_rng(0)  # the points' horizontal jitter: the same figure every time
    for ax, (label, table) in zip(axes.ravel(), tables.items()):
        values = list(table["dice_per_image"])
        ax.boxplot(values, showfliers=False, widths=0.5)
        for i, v in enumerate(values, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=6, alpha=0.5, color="tab:blue")
        ax.set_xticks(range(1, len(values) + 1), list(table["model"]), rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_ylabel("Dice per image")
        # from just below the worst image: good segmenters differ in the second decimal, near 1
        lowest = min(float(np.min(v)) for v in values)
        ax.set_ylim(max(-0.01, lowest - 0.03), 1.01)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _job_model_and_data(job_dir: Path, cache_dir: str | None) -> tuple[Segmenter, LungMaskDataModule]:
    """A job's best checkpoint and its mask sets, split as the job split them."""
    model = load_segmenter(job_dir / layout.CHECKPOINTS / layout.BEST)
    resolved = job_dir / layout.CONFIG_RESOLVED
    if resolved.is_file():
        data = OmegaConf.load(resolved).data
    else:  # a job from before covidseg-train-segmenter wrote it: resolved here, with this machine's paths
        register_resolvers()
        data = OmegaConf.load(job_dir / ".hydra" / "config.yaml").data
    datamodule = instantiate(data, cache_dir=cache_dir or data.cache_dir, num_workers=0, _convert_="all")
    datamodule.setup("test")
    return model, datamodule


def plot_worst_cases(
    runs: pd.DataFrame,
    scores: dict[str, pd.DataFrame],
    k: int,
    path: Path,
    title: str,
    cache_dir: str | None,
    loaded: dict[str, tuple[Segmenter, LungMaskDataModule]],
    columns: int = 4,
) -> bool:
    """overlay_grid of the k lowest-Dice test images over the jobs of one model (its seeds).

    Args:
        runs: the model's finished jobs (job, dir, seed).
        scores: job -> the per-image scores (report.segmenter.read_scores) of the images to choose from.
        k: images drawn.
        path: the PNG written.
        title: what the gallery shows (population and model), in the log.
        cache_dir: the image cache; None: each job's data.cache_dir.
        loaded: job folder -> its model and data, reloaded once for every gallery (filled here).
        columns: images per row.

    Returns:
        Whether the gallery was written (False, with a warning, when a job could not be reloaded).
    """
    pooled = pd.concat([t.assign(job=job) for job, t in scores.items()], ignore_index=True)
    worst = pooled.nsmallest(k, "dice", keep="first")
    images, predicted, truth, titles, dice = [], [], [], [], []
    for job, picks in worst.groupby("job", sort=False):
        run = runs[runs["job"] == job].iloc[0]
        try:
            if run["dir"] not in loaded:
                loaded[run["dir"]] = _job_model_and_data(Path(run["dir"]), cache_dir)
        except (UserError, OSError) as err:
            log.warning("No worst-case gallery for %s: job %s could not be reloaded: %s", title, job, err)
            return False
        model, datamodule = loaded[run["dir"]]
        test = datamodule.table[datamodule.table["split"] == "test"].reset_index(drop=True)
        index = {(str(s), str(i)): n for n, (s, i) in enumerate(zip(test["set"], test["image"]))}
        rows = [index[(str(s), str(i))] for s, i in zip(picks["set"], picks["image"])]
        drawn = overlay_arrays(model, datamodule, np.array(rows))
        images += drawn[0]
        predicted += list(drawn[1])
        truth += drawn[2]
        dice += list(picks["dice"])
        titles += [
            f"{Path(str(name)).stem[:16]}\nDice {d:.3f} · seed {run['seed']}"
            for name, d in zip(picks["image"], picks["dice"])
        ]
    order = np.argsort(dice, kind="stable")  # worst first, across the seeds' jobs
    overlay_grid(
        [images[i] for i in order],
        [predicted[i] for i in order],
        [truth[i] for i in order],
        path,
        titles=[titles[i] for i in order],
        columns=min(columns, len(images)),
    )
    return True
