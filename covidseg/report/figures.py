"""The report's figures: training curves, confusion matrices, a Grad-CAM / Grad-CAM++ gallery and the
internal-vs-external AUROC of every model."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from covidseg.errors import UserError
from covidseg.explain.job_arrays import CAM_METHODS, gallery_arrays, stored_gallery
from covidseg.inference.overlays import pyplot
from covidseg.outputs import layout
from covidseg.report.collect import INPUT_ORDER, compared_groups, finished, run_key, select_jobs
from covidseg.report.jobs import job_test_data

log = logging.getLogger("covidseg.report")


def epoch_curves(job_dir: Path) -> pd.DataFrame | None:
    """Per-epoch train/val accuracy and loss from the job's CSV logger."""
    path = job_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    columns = [c for c in ("train/acc", "val/acc", "train/loss", "val/loss") if c in frame]
    return frame.groupby("epoch")[columns].mean()


def plot_curves(jobs: pd.DataFrame, out_dir: Path) -> list[str]:
    """curves.png (all models) and curves_<model>.png: mean over runs (seeds, folds), band ±1 std. A model is
    its backbone, with its image size and epochs where the sweep's jobs differ in them (collect.model_names),
    written into the file name with _ for what a file name should not hold."""
    plt = pyplot()
    ok = finished(jobs)
    backbones = list(dict.fromkeys(ok["model"]))
    panels = [("acc", "accuracy"), ("loss", "loss")]
    written = []

    def draw(axes_row, backbone):
        for ax, (metric, label) in zip(axes_row, panels):
            for input_ in [i for i in INPUT_ORDER if i in set(ok["input"])]:
                curves = [epoch_curves(Path(d)) for d in select_jobs(ok, backbone, input_)["dir"]]
                curves = [c for c in curves if c is not None]
                if not curves:
                    continue
                for split, style in (("train", "--"), ("val", "-")):
                    column = f"{split}/{metric}"
                    stacked = pd.concat([c[column] for c in curves if column in c], axis=1)
                    if stacked.empty:
                        continue
                    mean, std = stacked.mean(axis=1), stacked.std(axis=1).fillna(0)
                    (line,) = ax.plot(mean.index, mean, style, label=f"{input_} {split}")
                    ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.15)
            ax.set_title(f"{backbone}: {label}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7)

    fig, axes = plt.subplots(len(backbones), 2, figsize=(10, 3.2 * len(backbones)), squeeze=False)
    for row, backbone in zip(axes, backbones):
        draw(row, backbone)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=100)
    plt.close(fig)
    written.append("curves.png")
    for backbone in backbones:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), squeeze=False)
        draw(axes[0], backbone)
        fig.tight_layout()
        name = "curves_" + re.sub(r"[^\w.-]+", "_", backbone) + ".png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def plot_confusions(jobs: pd.DataFrame, out_dir: Path) -> None:
    """confusion.png: the confusion matrix of the best seed (by test F1) of each backbone x input."""
    plt = pyplot()
    ok = finished(jobs)
    rows = compared_groups(jobs)
    columns = min(4, len(rows))
    fig, axes = plt.subplots(
        -(-len(rows) // columns),
        columns,
        figsize=(3 * columns, 2.9 * -(-len(rows) // columns)),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (backbone, input_) in zip(axes.ravel(), rows):
        group = select_jobs(ok, backbone, input_)
        best = group.loc[group["test/f1"].astype(float).idxmax()]
        matrix = np.array(json.loads(best["test/confusion"]))
        classes = json.loads((Path(best["dir"]) / layout.METRICS).read_text())["classes"]
        ax.axis("on")
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(
                j, i, str(v), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white"
            )
        ax.set_xticks(range(len(classes)), classes, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        fold = "" if pd.isna(best["fold"]) else f" fold {best['fold']}"
        ax.set_title(
            f"{backbone} {input_}\nseed {best['seed']}{fold}, F1 {float(best['test/f1']):.3f}", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=100)
    plt.close(fig)


def plot_cam_gallery(jobs: pd.DataFrame, out_dir: Path, k: int, cache_dir: str | None = None) -> bool:
    """cam_gallery.png: K test images of both classes (first seed, and fold): image, lung mask, and Grad-CAM /
    Grad-CAM++ of the raw and the segmented model of each backbone, over the image that model saw.

    Each job's maps come from the cam_gallery.npz it left, or (older jobs, another K) from its reloaded
    model. A job whose model cannot be reloaded (no checkpoint) is left out with a warning.

    Args:
        jobs: the sweep's jobs (collect_jobs).
        out_dir: the sweep folder, where the figure is written.
        k: test images shown (K).
        cache_dir: the image cache for jobs whose maps must be computed; None: each job's data.cache_dir.

    Returns:
        False when no job could be reloaded and no figure was written, else True.
    """
    plt = pyplot()
    ok = finished(jobs)
    first = min(run_key(job) for _, job in ok.iterrows())  # raw and segmented share this split
    models = [(b, i) for b, i in compared_groups(jobs) if i in ("raw", "segmented")]
    loaded: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for backbone, input_ in models:
        job = select_jobs(ok, backbone, input_)
        job = job[[run_key(r) == first for _, r in job.iterrows()]]
        if not len(job):
            continue
        try:
            loaded[(backbone, input_)] = _gallery_arrays(Path(job.iloc[0]["dir"]), k, cache_dir)
        except UserError as err:
            log.warning("CAM gallery without job %s: %s", job.iloc[0]["job"], err)
    if not loaded:
        return False
    reference = next(iter(loaded.values()))
    picks = reference["picks"]
    for model in [m for m, a in loaded.items() if not np.array_equal(a["picks"], picks)]:
        log.warning("CAM gallery without %s %s: its test split differs from the other models'", *model)
        del loaded[model]
    columns = 2 + 2 * len(loaded)
    fig, axes = plt.subplots(len(picks), columns, figsize=(1.6 * columns, 1.75 * len(picks)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    lungs = reference.get("lung_masks")
    for r in range(len(picks)):
        axes[r, 0].imshow(reference["unmasked"][r], cmap="gray")
        axes[r, 0].set_title(f"{reference['labels'][r]}", fontsize=6)
        if lungs is not None:
            axes[r, 1].imshow(lungs[r], cmap="gray")
        axes[r, 1].set_title("lung mask" if lungs is not None else "no segmenter", fontsize=6)
    col = 2
    for (backbone, input_), arrays in loaded.items():
        for method, name in CAM_METHODS:
            for r, cam in enumerate(arrays[method]):
                seen = arrays["seen"][r]
                axes[r, col].imshow(seen, cmap="gray")
                axes[r, col].imshow(cam, cmap="jet", alpha=0.45, extent=(0, seen.shape[1], seen.shape[0], 0))
                axes[r, col].set_title(
                    f"{backbone[:14]} {input_[:3]}\n{name} p={arrays['probs'][r]:.2f}", fontsize=5
                )
            col += 1
    fig.tight_layout()
    fig.savefig(out_dir / "cam_gallery.png", dpi=110)
    plt.close(fig)
    return True


def _gallery_arrays(job_dir: Path, k: int, cache_dir: str | None) -> dict[str, np.ndarray]:
    """One model's gallery arrays: those the job left, else computed from its reloaded model and test data."""
    stored = stored_gallery(job_dir, k)
    if stored is not None:
        return stored
    job = job_test_data(job_dir, cache_dir)
    table = job.datamodule.table
    labels = table[table["split"] == "test"]["label"].to_numpy()

    def unmasked(picks: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        lungs = None if job.lung_masks is None else job.lung_masks[picks]
        return job.unmasked_images[picks], lungs

    return gallery_arrays(job.model, job.datamodule, labels, unmasked, k)


def plot_external_auroc(cells: dict[str, dict[tuple[str, str], dict]], out_dir: Path) -> str:
    """external_auroc.png: every model's AUROC on each test set (internal first, then the external sets)
    side by side, with its 95 % patient-bootstrap interval; the dashed line is chance (0.5).

    cells: test set label -> (backbone, input) -> {"estimate", "ci_low", "ci_high"}."""
    plt = pyplot()
    models = list(dict.fromkeys(m for per_set in cells.values() for m in per_set))
    width = 0.8 / len(cells)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(models) + 2), 3.8))
    for j, (label, per_set) in enumerate(cells.items()):
        xs, ys, low, high = [], [], [], []
        for i, model in enumerate(models):
            cell = per_set.get(model)
            if cell is None or math.isnan(cell["estimate"]):
                continue
            xs.append(i + (j - (len(cells) - 1) / 2) * width)
            ys.append(cell["estimate"])
            bounded = not math.isnan(cell["ci_low"])
            # max: a percentile interval need not contain the estimate (e.g. -1e-17 off at AUROC 0)
            low.append(max(cell["estimate"] - cell["ci_low"], 0.0) if bounded else 0.0)
            high.append(max(cell["ci_high"] - cell["estimate"], 0.0) if bounded else 0.0)
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3, label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(models)), [f"{b}\n{i}" for b, i in models], fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("AUROC")
    ax.set_title(
        "AUROC per model: internal test vs external sets (95 % patient-bootstrap intervals)", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "external_auroc.png", dpi=100)
    plt.close(fig)
    return "external_auroc.png"
