"""The recipe and lever tables of experiments/README.md, from the sweeps of experiments/levers.sh (each
with its results.csv).

    python experiments/lever_table.py OUT_DIR

Prints Markdown: per recipe, internal test and external AUROC for every backbone x input (mean over
seeds, [95 % patient-bootstrap interval pooled over seeds]) with the validation epochs that predicted a
single class; the levers on resnet18; the pooled out-of-fold AUROC of the 5-fold sweeps. Every number is
read from the sweeps' own files.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from covidseg.report.collect import collect_jobs, finished
from covidseg.report.tables import markdown_table
from covidseg.stats import bootstrap_patient_metric

LEVERS = [  # (sweep prefix, input, label)
    ("recipe", "raw", "raw (baseline)"),
    ("recipe", "segmented", "lung-segmented"),
    ("recipe", "lungs_removed", "lungs removed (control)"),
    ("clahe", "raw", "CLAHE"),
    ("clahe", "segmented", "CLAHE + lung-segmented"),
    ("crop", "segmented", "lung-segmented, cropped to the lungs"),
    ("crop", "lungs_removed", "lungs removed, cropped to the lung box"),
]


def cell(jobs: pd.DataFrame, predictions: str, n_boot: int) -> str:
    """AUROC mean over seeds [95 % patient bootstrap pooled over seeds] of the jobs' prediction files."""
    frames = [pd.read_csv(Path(d) / predictions) for d in jobs["dir"] if (Path(d) / predictions).is_file()]
    if not frames:
        return "–"
    result = bootstrap_patient_metric(frames, "auroc", n_boot=n_boot, seed=0)
    if math.isnan(result["estimate"]):
        return "–"
    return f"{result['estimate']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}]"


def external_file(jobs: pd.DataFrame) -> str | None:
    names = sorted(
        {c.split("/")[1] for c in jobs.columns if c.startswith("external/") and c.endswith("/auroc")}
    )
    return f"predictions_{names[0]}.csv" if names else None


def sweep_jobs(out: Path, name: str) -> pd.DataFrame | None:
    folder = out / name
    return finished(collect_jobs(folder)) if folder.is_dir() else None


def recipe_table(out: Path, recipes: list[str], n_boot: int) -> str:
    header = [
        "Recipe",
        "Backbone",
        "Input",
        "Jobs",
        "Internal test AUROC",
        "External AUROC",
        "Val. epochs with one class",
    ]
    rows = []
    for recipe in recipes:
        jobs = sweep_jobs(out, f"recipe_{recipe}")
        if jobs is None:
            continue
        ext = external_file(jobs)
        for (backbone, input_), group in jobs.groupby(["backbone", "input"], sort=False):
            single = (
                int(group["val/single_class_epochs"].sum()) if "val/single_class_epochs" in group else "?"
            )
            rows.append(
                [
                    recipe,
                    backbone,
                    input_,
                    len(group),
                    cell(group, "predictions.csv", n_boot),
                    cell(group, ext, n_boot) if ext else "–",
                    f"{single} of {int(group['epochs_run'].sum())}",
                ]
            )
    return markdown_table(header, rows)


def lever_table(out: Path, recipes: list[str], backbone: str, n_boot: int) -> str:
    rows = []
    for recipe in recipes:
        for prefix, input_, label in LEVERS:
            jobs = sweep_jobs(out, f"{prefix}_{recipe}")
            group = None if jobs is None else jobs[(jobs["backbone"] == backbone) & (jobs["input"] == input_)]
            if group is None or group.empty:
                continue
            ext = external_file(group)
            rows.append(
                [
                    recipe,
                    label,
                    len(group),
                    cell(group, "predictions.csv", n_boot),
                    cell(group, ext, n_boot) if ext else "–",
                ]
            )
    return markdown_table(["Recipe", "Lever", "Jobs", "Internal test AUROC", "External AUROC"], rows)


def folds_table(out: Path, recipes: list[str], n_boot: int) -> str:
    """Pooled out-of-fold AUROC per recipe and input: each image tested once, by a model not trained on it."""
    rows = []
    for recipe in recipes:
        jobs = sweep_jobs(out, f"folds_{recipe}")
        if jobs is None:
            continue
        for (backbone, input_), group in jobs.groupby(["backbone", "input"], sort=False):
            pooled = pd.concat([pd.read_csv(Path(d) / "predictions.csv") for d in group["dir"]])
            result = bootstrap_patient_metric(pooled, "auroc", n_boot=n_boot, seed=0)
            rows.append(
                [
                    recipe,
                    backbone,
                    input_,
                    len(group),
                    len(pooled),
                    pooled["path"].nunique(),
                    f"{result['estimate']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}]",
                ]
            )
    header = ["Recipe", "Backbone", "Input", "Folds", "Images tested", "Distinct images", "Pooled AUROC"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the OUT_DIR given to experiments/levers.sh")
    parser.add_argument("--recipes", nargs="+", default=["study", "stable"])
    parser.add_argument("--backbone", default="resnet18", help="backbone of the lever table")
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()
    print("## Recipes\n")
    print(recipe_table(args.out, args.recipes, args.n_boot))
    print(f"\n## Levers ({args.backbone})\n")
    print(lever_table(args.out, args.recipes, args.backbone, args.n_boot))
    print("\n## Patient-level 5-fold cross-validation (pooled out-of-fold predictions)\n")
    print(folds_table(args.out, args.recipes, args.n_boot))


if __name__ == "__main__":
    main()
