"""The report's ROC / precision-recall figures (one per test set: a row per backbone, raw and segmented in one
panel, the mean curve over runs with its patient-bootstrap band) and the reliability diagrams (a panel per
model, a curve per test set, with Brier score and ECE)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from covidseg import stats
from covidseg.inference.overlays import pyplot
from covidseg.report.collect import INPUT_ORDER
from covidseg.report.pooling import TestSet
from covidseg.report.tables import BOOT_SEED, is_binary
from covidseg.stats import prob_columns
from covidseg.stats.calibration import brier_score, expected_calibration_error, reliability_curve
from covidseg.stats.curves import bootstrap_curve

COLOURS = {"raw": "tab:blue", "segmented": "tab:orange", "lungs_removed": "tab:green"}
SET_COLOURS = ("black", "tab:red", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


def figure_name(stem: str, test_set: str | None) -> str:
    """<stem>.png for the internal test set, <stem>_<set>.png for an external one (unsafe characters as _)."""
    return f"{stem}.png" if test_set is None else f"{stem}_" + re.sub(r"[^\w.-]+", "_", test_set) + ".png"


def _binary_models(test_sets: dict[tuple[str, str], TestSet]) -> dict[tuple[str, str], TestSet]:
    return {g: s for g, s in test_sets.items() if s.tables and is_binary(s)}


def plot_roc_pr(
    test_sets: dict[tuple[str, str], TestSet], label: str, out_dir: Path, name: str, n_boot: int
) -> str | None:
    """roc_pr(_<set>).png: per backbone a ROC and a precision-recall panel, one curve per input (the mean over
    its runs) with a pointwise 95 % patient-bootstrap band; None (no figure) for tasks of more classes.

    Args:
        test_sets: the models' prediction tables on the test set.
        label: the test set's name in the titles.
        out_dir: the sweep folder.
        name: the figure's file name (figure_name).
        n_boot: bootstrap resamples of the bands.
    """
    models = _binary_models(test_sets)
    if not models:
        return None
    plt = pyplot()
    backbones = list(dict.fromkeys(b for b, _ in models))
    fig, axes = plt.subplots(len(backbones), 2, figsize=(8.5, 4.4 * len(backbones)), squeeze=False)
    for row, backbone in zip(axes, backbones):
        prevalence = None
        for input_ in [i for i in INPUT_ORDER if (backbone, i) in models]:
            tables = list(models[(backbone, input_)].tables.values())
            prevalence = float(np.mean([t["target"].mean() for t in tables]))
            runs = f"{len(tables)} run{'s' if len(tables) > 1 else ''}"
            auroc = np.mean([stats.auroc(t["target"], t[prob_columns(t)[1]]) for t in tables])
            labels = (f"{input_}: AUROC {auroc:.3f} ({runs})", f"{input_} ({runs})")
            for ax, kind, text in zip(row, ("roc", "pr"), labels):
                curve = bootstrap_curve(tables, kind, n_boot, BOOT_SEED)
                colour = COLOURS.get(input_)
                ax.plot(curve["x"], curve["y"], color=colour, label=text)
                ax.fill_between(curve["x"], curve["ci_low"], curve["ci_high"], color=colour, alpha=0.2, lw=0)
        roc, pr = row
        roc.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="chance")
        roc.set(xlabel="1 − specificity (false-positive rate)", ylabel="sensitivity (recall)")
        roc.set_title(f"{backbone}: ROC on {label}", fontsize=9)
        if prevalence is not None:
            pr.axhline(prevalence, linestyle=":", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
        pr.set(xlabel="sensitivity (recall)", ylabel="precision")
        pr.set_title(f"{backbone}: precision-recall on {label}", fontsize=9)
        for ax in row:
            ax.set(xlim=(0, 1), ylim=(0, 1.02))
            ax.set_aspect("equal")
            ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
    fig.suptitle("Mean curve over runs; band: 95 % patient-bootstrap interval (pointwise)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
    plt.close(fig)
    return name


def plot_calibration(
    sets: dict[str, dict[tuple[str, str], TestSet]], positive: str, out_dir: Path
) -> str | None:
    """calibration.png: a reliability diagram per model (rows: backbones, columns: inputs), one curve per test
    set (the runs' predictions together, 10 equal-width bins, marker area by images), Brier score and ECE
    (mean over runs) in the legend; None for tasks of more classes.

    Args:
        sets: test set label -> the models' prediction tables, internal first.
        positive: the positive class, for the axis label.
        out_dir: the sweep folder.
    """
    per_set = {label: _binary_models(test_sets) for label, test_sets in sets.items()}
    models = list(dict.fromkeys(g for test_sets in per_set.values() for g in test_sets))
    if not models:
        return None
    plt = pyplot()
    backbones = list(dict.fromkeys(b for b, _ in models))
    inputs = [i for i in INPUT_ORDER if any(m[1] == i for m in models)]
    fig, axes = plt.subplots(
        len(backbones), len(inputs), figsize=(3.6 * len(inputs), 4.4 * len(backbones)), squeeze=False
    )
    for r, backbone in enumerate(backbones):
        for c, input_ in enumerate(inputs):
            ax = axes[r, c]
            if not any((backbone, input_) in test_sets for test_sets in per_set.values()):
                ax.axis("off")  # this backbone was not trained on this input
                continue
            ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
            for colour, (label, test_sets) in zip(SET_COLOURS, per_set.items()):
                test_set = test_sets.get((backbone, input_))
                if test_set is None:
                    continue
                tables = list(test_set.tables.values())
                pooled = pd.concat(tables, ignore_index=True)
                prob = pooled[prob_columns(pooled)[1]].to_numpy(dtype=float)
                curve = reliability_curve(pooled["target"], prob)
                brier = np.mean([brier_score(t["target"], t[prob_columns(t)[1]]) for t in tables])
                ece = np.mean(
                    [expected_calibration_error(t["target"], t[prob_columns(t)[1]]) for t in tables]
                )
                ax.plot(
                    curve["mean_predicted"],
                    curve["observed"],
                    "-o",
                    color=colour,
                    lw=1,
                    ms=3,
                    label=f"{label}: Brier {brier:.3f}, ECE {ece:.3f}",
                )
                ax.scatter(
                    curve["mean_predicted"],
                    curve["observed"],
                    s=120 * curve["n"] / curve["n"].sum(),
                    color=colour,
                )
            ax.set(
                xlim=(0, 1),
                ylim=(-0.02, 1.02),
                xlabel=f"predicted P({positive})",
                ylabel=f"observed share {positive}",
            )
            ax.set_aspect("equal")
            ax.set_title(f"{backbone} {input_}", fontsize=9)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: off the points
    fig.suptitle(
        "Reliability: observed share per probability bin, marker area ∝ images (dotted: perfect)", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(out_dir / "calibration.png", dpi=100, bbox_inches="tight")  # the legends below the axes
    plt.close(fig)
    return "calibration.png"
