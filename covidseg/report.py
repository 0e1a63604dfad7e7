"""covidseg-report <multirun dir>: the raw-vs-segmented comparison of a sweep, with honest statistics.

Writes into the sweep folder: report.md (embeds the figures), results.csv (one row per job),
curves.png + curves_<backbone>.png, confusion.png, cam_gallery.png, and lung_energy.json per job.
Everything is computed from the jobs' own files (metrics.json, predictions.csv, csv/metrics.csv,
.hydra/config.yaml, checkpoints/best.ckpt); nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from covidseg.cli import FAILED_FILE, RESOLVED_CONFIG
from covidseg.errors import UserError
from covidseg.stats import bootstrap_patient_difference, mean_ci, paired_difference

log = logging.getLogger("covidseg.report")

METRICS = [("test/acc", "Accuracy"), ("test/precision", "Precision"), ("test/recall", "Recall"),
           ("test/specificity", "Specificity"), ("test/f1", "F1"), ("test/auroc", "AUROC"),
           ("lung_energy", "Lung energy")]
INPUT_ORDER = ["raw", "segmented", "lungs_removed"]


# -- collecting the jobs ------------------------------------------------------------------------------
def collect_jobs(sweep_dir: Path) -> pd.DataFrame:
    """One row per job folder (a folder with .hydra/config.yaml): its settings, status and metrics."""
    rows = []
    for config_file in sorted(sweep_dir.glob("*/.hydra/config.yaml"), key=lambda p: _job_key(p.parents[1].name)):
        job = config_file.parents[1]
        cfg = OmegaConf.load(config_file)
        row: dict[str, Any] = {"job": job.name, "dir": str(job), "backbone": cfg.model.backbone,
                               "input": cfg.data.input, "seed": int(cfg.seed)}
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            row.update({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
            row["test/confusion"] = json.dumps(metrics.get("test/confusion"))
            row["status"] = "ok"
        elif (job / FAILED_FILE).is_file():
            row.update(status="failed", error=json.loads((job / FAILED_FILE).read_text())["error"])
        else:
            row.update(status="failed", error="no metrics.json (job killed or still running)")
        rows.append(row)
    if rows:
        keys = pd.DataFrame(rows)[["backbone", "input", "seed"]]
        repeated = keys[keys.duplicated(keep=False)]
        if len(repeated):
            raise UserError(
                f"{sweep_dir}: several jobs share backbone/input/seed ({repeated.drop_duplicates().to_dict('records')[:3]}); "
                "the report compares backbones x input over seeds only. Sweep other settings in separate folders.")
    if not rows:
        raise UserError(f"{sweep_dir} holds no job folders (<job>/.hydra/config.yaml). Give the folder of a "
                        "`covidseg-train -m` sweep (hydra.sweep.dir), e.g. logs/train/multiruns/<date>.")
    return pd.DataFrame(rows)


def _job_key(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (sys.maxsize, name)


def _select(ok: pd.DataFrame, backbone: str, input_: str) -> pd.DataFrame:
    return ok[(ok["backbone"] == backbone) & (ok["input"] == input_)]


def _rows(jobs: pd.DataFrame) -> list[tuple[str, str]]:
    ok = jobs[jobs["status"] == "ok"]
    backbones = list(dict.fromkeys(ok["backbone"]))
    inputs = [i for i in INPUT_ORDER if i in set(ok["input"])]
    return [(b, i) for b in backbones for i in inputs if len(_select(ok, b, i))]


# -- lung energy ---------------------------------------------------------------------------------------
def job_test_data(job_dir: Path, cache_dir: str | None = None):
    """The classifier of a job and its test images exactly as it saw them, plus their lung masks."""
    from covidseg.data.datamodule import CXRDataModule
    from covidseg.eval import load_classifier
    from covidseg.masks import MaskSource

    model = load_classifier(job_dir / "checkpoints" / "best.ckpt")
    resolved = job_dir / RESOLVED_CONFIG
    if not resolved.is_file():
        raise UserError(f"{resolved} is missing; it is written by covidseg-train at the start of every run.")
    cfg = OmegaConf.load(resolved)
    data = OmegaConf.to_container(cfg.data)
    data["cache_dir"] = cache_dir or data["cache_dir"]
    try:
        masks = MaskSource.from_config(cfg.segmenter, cache_dir=data["cache_dir"])
    except UserError:
        if data["input"] != "raw":
            raise
        masks = None  # a raw-only sweep without a segmenter: no masks, no lung energy
    datamodule = CXRDataModule.from_record(data, split_file=str(job_dir / "splits.csv"), evaluate_on="test",
                                           limit=None, masks=masks)
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    if datamodule.lung_masks is None:  # raw input: the unmasked images are the ones the model saw
        datamodule.unmasked_images = test.images[:, 0].numpy()
        if masks is not None:  # masks are still needed to measure where the CAM looks
            datamodule.lung_masks = masks.masks_for(list(datamodule.table["file"]), list(datamodule.table["digest"]),
                                                    size=datamodule.image_size)
            datamodule.masks_as_seen = datamodule.lung_masks
    return model, datamodule


def job_lung_energy(job_dir: Path, max_images: int, cache_dir: str | None = None) -> dict[str, Any]:
    """Mean share of Grad-CAM mass inside the lung mask over (up to max_images of) a job's test images.

    Cached in <job>/lung_energy.json (keyed by max_images)."""
    from covidseg.explain import cam_maps, lung_energy
    from covidseg.masks import resize_mask

    cache = job_dir / "lung_energy.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("max_images") == max_images and "lung_area" in stored:
            return stored
    model, datamodule = job_test_data(job_dir, cache_dir)
    if datamodule.lung_masks is None:
        raise UserError(f"no lung masks for {job_dir} (segmenter.ckpt_path does not exist)")
    test = datamodule.datasets["test"]
    n = min(max_images, len(test))
    picks = np.linspace(0, len(test) - 1, num=n).round().astype(int)
    energies, areas = [], []
    for start in range(0, n, 16):
        idx = picks[start:start + 16]
        x = torch.stack([test[i][0] for i in idx])
        # The predicted class is explained: where the model looked for the decision it made.
        cams = cam_maps(model.net, x, target_class=None, binary=model.binary)
        for cam, i in zip(cams, idx):
            mask = resize_mask(datamodule.masks_as_seen[i], cam.shape[-1])
            energies.append(lung_energy(cam, mask))
            areas.append(float(mask.mean()))
    values = [e for e in energies if not math.isnan(e)]
    # lung_area is what a CAM spread evenly over the image would score: the baseline to compare with.
    result = {"lung_energy": float(np.mean(values)) if values else math.nan, "lung_area": float(np.mean(areas)),
              "n_images": len(values), "max_images": max_images}
    cache.write_text(json.dumps(result))
    return result


# -- tables --------------------------------------------------------------------------------------------
def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_table(jobs: pd.DataFrame) -> pd.DataFrame:
    ok = jobs[jobs["status"] == "ok"]
    records = []
    for backbone, input_ in _rows(jobs):
        group = _select(ok, backbone, input_)
        record: dict[str, Any] = {"backbone": backbone, "input": input_, "seeds": len(group)}
        for key, _ in METRICS:
            if key in group:
                record[key] = mean_ci(group[key].astype(float).to_numpy())
        records.append(record)
    return pd.DataFrame(records)


def markdown_summary(summary: pd.DataFrame) -> str:
    header = "| Backbone | Input | Seeds | " + " | ".join(name for _, name in METRICS) + " |"
    lines = [header, "|" + "---|" * (3 + len(METRICS))]
    for _, r in summary.iterrows():
        cells = []
        for key, _ in METRICS:
            s = r.get(key)
            if not isinstance(s, dict) or s["n"] == 0:
                cells.append("–")
            elif s["n"] == 1:
                cells.append(_fmt(s["mean"]))
            else:
                cells.append(f"{_fmt(s['mean'])} ± {_fmt(s['std'])}<br>[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]")
        lines.append(f"| {r['backbone']} | {r['input']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_comparisons(jobs: pd.DataFrame, n_boot: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segmented - raw per backbone: paired t-test across seeds, and a patient bootstrap per seed."""
    ok = jobs[jobs["status"] == "ok"]
    across, boot = [], []
    for backbone in dict.fromkeys(ok["backbone"]):
        raw = _select(ok, backbone, "raw").set_index("seed")
        seg = _select(ok, backbone, "segmented").set_index("seed")
        seeds = sorted(set(raw.index) & set(seg.index))
        if not seeds:
            continue
        for key, name in METRICS:
            if key not in raw or key not in seg:
                continue
            result = paired_difference(raw.loc[seeds, key].astype(float), seg.loc[seeds, key].astype(float))
            across.append({"backbone": backbone, "metric": name, "seeds": len(seeds), **result})
        for seed in seeds:
            a = pd.read_csv(Path(raw.loc[seed, "dir"]) / "predictions.csv")
            b = pd.read_csv(Path(seg.loc[seed, "dir"]) / "predictions.csv")
            binary = sum(c.startswith("prob_") for c in a.columns) == 2
            for metric in ("f1", "recall", "auroc") if binary else ("accuracy",):
                result = bootstrap_patient_difference(a, b, metric, n_boot=n_boot, seed=seed)
                boot.append({"backbone": backbone, "seed": seed, "metric": metric, **result})
    return pd.DataFrame(across), pd.DataFrame(boot)


def markdown_paired(across: pd.DataFrame) -> str:
    lines = ["| Backbone | Metric | Seeds | Raw | Segmented | Δ (seg − raw) | 95 % CI | p (paired t) |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in across.iterrows():
        lines.append(f"| {r['backbone']} | {r['metric']} | {r['seeds']} | {_fmt(r['mean_a'])} | {_fmt(r['mean_b'])} | "
                     f"{_fmt(r['mean_diff'])} | [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['p_value'])} |")
    return "\n".join(lines)


def markdown_bootstrap(boot: pd.DataFrame) -> str:
    lines = ["| Backbone | Seed | Metric | Raw | Segmented | Δ | 95 % CI (patients) | p (bootstrap) | Patients |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in boot.iterrows():
        lines.append(f"| {r['backbone']} | {r['seed']} | {r['metric']} | {_fmt(r['metric_a'])} | {_fmt(r['metric_b'])} | "
                     f"{_fmt(r['observed'])} | [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['p_value'])} | "
                     f"{r['n_patients']} |")
    return "\n".join(lines)


def markdown_splits(jobs: pd.DataFrame) -> str:
    ok = jobs[jobs["status"] == "ok"]
    columns = [c for c in ("n_train", "n_val", "n_test", "patients_train", "patients_val", "patients_test") if c in ok]
    sizes = ok.groupby("seed")[columns].first().astype(int)
    lines = ["| Seed | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {seed} | " + " | ".join(str(v) for v in row) + " |" for seed, row in sizes.iterrows()]
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epoch_curves(job_dir: Path) -> pd.DataFrame | None:
    """Per-epoch train/val accuracy and loss from the job's CSV logger."""
    path = job_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    columns = [c for c in ("train/acc", "val/acc", "train/loss", "val/loss") if c in frame]
    return frame.groupby("epoch")[columns].mean()


def plot_curves(jobs: pd.DataFrame, out_dir: Path) -> list[str]:
    """curves.png (all backbones) and curves_<backbone>.png: mean over seeds, band = ±1 std."""
    plt = _plt()
    ok = jobs[jobs["status"] == "ok"]
    backbones = list(dict.fromkeys(ok["backbone"]))
    panels = [("acc", "accuracy"), ("loss", "loss")]
    written = []

    def draw(axes_row, backbone):
        for ax, (metric, label) in zip(axes_row, panels):
            for input_ in [i for i in INPUT_ORDER if i in set(ok["input"])]:
                curves = [epoch_curves(Path(d)) for d in _select(ok, backbone, input_)["dir"]]
                curves = [c for c in curves if c is not None]
                if not curves:
                    continue
                for split, style in (("train", "--"), ("val", "-")):
                    column = f"{split}/{metric}"
                    stacked = pd.concat([c[column] for c in curves if column in c], axis=1)
                    if stacked.empty:
                        continue
                    mean, std = stacked.mean(axis=1), stacked.std(axis=1).fillna(0)
                    line, = ax.plot(mean.index, mean, style, label=f"{input_} {split}")
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
        name = f"curves_{backbone}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def plot_confusions(jobs: pd.DataFrame, out_dir: Path) -> None:
    """confusion.png: the confusion matrix of the best seed (by test F1) of each backbone x input."""
    plt = _plt()
    ok = jobs[jobs["status"] == "ok"]
    rows = _rows(jobs)
    columns = min(4, len(rows))
    fig, axes = plt.subplots(-(-len(rows) // columns), columns, figsize=(3 * columns, 2.9 * -(-len(rows) // columns)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (backbone, input_) in zip(axes.ravel(), rows):
        group = _select(ok, backbone, input_)
        best = group.loc[group["test/f1"].astype(float).idxmax()]
        matrix = np.array(json.loads(best["test/confusion"]))
        classes = json.loads((Path(best["dir"]) / "metrics.json").read_text())["classes"]
        ax.axis("on")
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white")
        ax.set_xticks(range(len(classes)), classes, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(f"{backbone} {input_}\nseed {best['seed']}, F1 {float(best['test/f1']):.3f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=100)
    plt.close(fig)


def plot_cam_gallery(jobs: pd.DataFrame, out_dir: Path, k: int, cache_dir: str | None = None) -> None:
    """cam_gallery.png: K test images of both classes (first common seed): image, lung mask, and Grad-CAM /
    Grad-CAM++ of the raw and the segmented model of each backbone, over the image that model saw."""
    from covidseg.explain import cam_maps

    plt = _plt()
    ok = jobs[jobs["status"] == "ok"]
    seed = sorted(ok["seed"].unique())[0]
    models = [(b, i) for b, i in _rows(jobs) if i in ("raw", "segmented")]
    loaded = {}
    for backbone, input_ in models:
        job = _select(ok, backbone, input_)
        job = job[job["seed"] == seed]
        if len(job):
            loaded[(backbone, input_)] = job_test_data(Path(job.iloc[0]["dir"]), cache_dir)
    if not loaded:
        return
    _, reference = next(iter(loaded.values()))
    targets = reference.datasets["test"].targets.numpy()
    picks = []
    for cls in np.unique(targets)[::-1]:  # positive class first
        picks.extend(np.flatnonzero(targets == cls)[: -(-k // len(np.unique(targets)))].tolist())
    picks = picks[:k]
    columns = 2 + 2 * len(loaded)
    fig, axes = plt.subplots(len(picks), columns, figsize=(1.6 * columns, 1.75 * len(picks)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    labels = reference.table[reference.table["split"] == "test"]["label"].to_numpy()
    for r, i in enumerate(picks):
        axes[r, 0].imshow(reference.unmasked_images[i], cmap="gray")
        axes[r, 0].set_title(f"{labels[i]}", fontsize=6)
        if reference.lung_masks is not None:
            axes[r, 1].imshow(reference.lung_masks[i], cmap="gray")
        axes[r, 1].set_title("lung mask" if reference.lung_masks is not None else "no segmenter", fontsize=6)
    col = 2
    for (backbone, input_), (model, datamodule) in loaded.items():
        test = datamodule.datasets["test"]
        x = torch.stack([test[i][0] for i in picks])
        positive = len(model.class_names) - 1 if model.binary else None
        with torch.no_grad():
            probs = model.probabilities(model.eval()(x))[:, -1].numpy()
        for method, name in (("gradcam", "Grad-CAM"), ("gradcam++", "Grad-CAM++")):
            cams = cam_maps(model.net, x, target_class=positive, method=method, binary=model.binary)
            for r, cam in enumerate(cams):
                seen = test.images[picks[r], 0].numpy()
                axes[r, col].imshow(seen, cmap="gray")
                axes[r, col].imshow(cam, cmap="jet", alpha=0.45, extent=(0, seen.shape[1], seen.shape[0], 0))
                axes[r, col].set_title(f"{backbone[:14]} {input_[:3]}\n{name} p={probs[r]:.2f}", fontsize=5)
            col += 1
    fig.tight_layout()
    fig.savefig(out_dir / "cam_gallery.png", dpi=110)
    plt.close(fig)


# -- the report ----------------------------------------------------------------------------------------
def build_report(sweep_dir: str | Path, cam_images: int = 8, energy_images: int = 64, n_boot: int = 2000,
                 cache_dir: str | None = None) -> Path:
    """Read every job of a sweep and write report.md, results.csv and the figures into the sweep folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} does not exist. Give the folder of a `covidseg-train -m` sweep.")
    jobs = collect_jobs(sweep_dir)
    ok_mask = jobs["status"] == "ok"
    for index in jobs.index[ok_mask]:
        try:
            energy = job_lung_energy(Path(jobs.at[index, "dir"]), energy_images, cache_dir)
            jobs.loc[index, "lung_energy"], jobs.loc[index, "lung_area"] = energy["lung_energy"], energy["lung_area"]
        except UserError as err:
            log.warning("No lung energy for job %s: %s", jobs.at[index, "job"], err)
            jobs.loc[index, "lung_energy"] = math.nan
    jobs.to_csv(sweep_dir / "results.csv", index=False)
    if not ok_mask.any():
        raise UserError(f"No job of {sweep_dir} finished; see results.csv and each job's {FAILED_FILE}.")
    summary = summary_table(jobs)
    across, boot = paired_comparisons(jobs, n_boot)
    curve_files = plot_curves(jobs, sweep_dir)
    plot_confusions(jobs, sweep_dir)
    plot_cam_gallery(jobs, sweep_dir, cam_images, cache_dir)
    failed = jobs[~ok_mask]
    text = _report_text(sweep_dir, jobs, summary, across, boot, curve_files, failed, energy_images)
    (sweep_dir / "report.md").write_text(text)
    _log_to_wandb(sweep_dir, jobs, curve_files)
    return sweep_dir / "report.md"


def _report_text(sweep_dir, jobs, summary, across, boot, curve_files, failed, energy_images) -> str:
    ok = jobs[jobs["status"] == "ok"]
    first = ok.iloc[0]
    settings = OmegaConf.load(Path(first["dir"]) / ".hydra" / "config.yaml")
    parts = [
        "# covidseg comparison: raw vs lung-segmented input\n",
        f"Sweep `{sweep_dir}`: {len(jobs)} job(s), {int(len(ok))} finished, {len(failed)} failed. "
        f"Classes {settings.data.classes} (positive: {settings.data.classes[-1]}), image size "
        f"{settings.data.image_size}, {settings.trainer.max_epochs} epoch(s) max, patient-level split "
        f"{dict(settings.data.split_ratios)}. Reproduce with `covidseg-report {sweep_dir}`.\n",
        "## Test metrics (mean ± std over seeds, [95 % t-interval])\n",
        "Lung energy: mean share of the Grad-CAM mass (for the predicted class) inside the predicted lung "
        f"mask, over up to {energy_images} test images per model (1.0 = the model looks only at the lungs; "
        "an all-zero CAM has no share and is left out). "
        + (f"For reference, the lung masks cover {jobs['lung_area'].mean():.3f} of these images on average: a CAM "
           "spread evenly over the image would score that.\n" if "lung_area" in jobs else "\n"),
        markdown_summary(summary), "",
        "## Does segmentation help? Segmented − raw, paired by seed\n",
        "Paired t-test over seeds (same seed = same patient split and initialisation).\n",
        markdown_paired(across) if len(across) else "_No backbone has both raw and segmented runs._", "",
        "Per seed, a paired bootstrap over test **patients** (whole patients resampled):\n",
        markdown_bootstrap(boot) if len(boot) else "_None._", "",
        "## Split sizes (images and patients)\n", markdown_splits(jobs), "",
        "## Training curves (mean over seeds, band ±1 std)\n",
        *[f"![{name}]({name})" for name in curve_files], "",
        "## Confusion matrices (best seed by F1)\n", "![confusion](confusion.png)", "",
        "## Grad-CAM / Grad-CAM++ gallery\n",
        "Each row: a test image, its predicted lung mask, then for every backbone the raw and the segmented "
        "model's heat maps for the positive class over the image that model saw.\n",
        "![cam gallery](cam_gallery.png)", "",
    ]
    if len(failed):
        parts += ["## Failed jobs\n", "| Job | Backbone | Input | Seed | Error |", "|---|---|---|---|---|"]
        parts += [f"| {r['job']} | {r['backbone']} | {r['input']} | {r['seed']} | {str(r.get('error', '')).replace('|', '/')[:300]} |"
                  for _, r in failed.iterrows()]
    return "\n".join(parts) + "\n"


def _log_to_wandb(sweep_dir: Path, jobs: pd.DataFrame, curve_files: list[str]) -> None:
    """Log the report and its figures to the sweep's W&B group (offline without an API key)."""
    cfg = OmegaConf.load(Path(jobs.iloc[0]["dir"]) / ".hydra" / "config.yaml")
    if "wandb" not in (cfg.get("logger") or {}):
        return
    import wandb

    from covidseg.tracking import wandb_mode

    group = cfg.get("group") or sweep_dir.name
    run = wandb.init(project=cfg.logger.wandb.project, group=group, job_type="report", name=f"report-{group}",
                     dir=str(sweep_dir), mode=wandb_mode())
    try:
        table = jobs.drop(columns=["dir"]).astype(str)
        run.log({"results": wandb.Table(dataframe=table),
                 **{name: wandb.Image(str(sweep_dir / name)) for name in [*curve_files, "confusion.png", "cam_gallery.png"]
                    if (sweep_dir / name).is_file()}})
        artifact = wandb.Artifact(f"report-{group}".replace("/", "-"), type="report")
        artifact.add_file(str(sweep_dir / "report.md"))
        run.log_artifact(artifact)
    finally:
        run.finish()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="covidseg-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="folder of a covidseg-train multirun (its hydra.sweep.dir)")
    parser.add_argument("--cam-images", type=positive_int, default=8, help="test images in cam_gallery.png")
    parser.add_argument("--energy-images", type=positive_int, default=64, help="test images per model for lung energy")
    parser.add_argument("--n-boot", type=positive_int, default=2000, help="bootstrap resamples over test patients")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        path = build_report(args.sweep_dir, args.cam_images, args.energy_images, args.n_boot)
    except UserError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
