"""The report's "Methods" section: what every number, interval and test of the report is, said once at the
end instead of beside every table."""

from __future__ import annotations

from covidseg.masks.area import P_VALUE, SMALLER_BY
from covidseg.report.summary import COLLAPSED_SHARE


def _cells(folds: int | None, seeds: int, n_boot: int) -> str:
    if folds:
        internal = (
            f"internal: the metric of the {folds} folds' pooled out-of-fold predictions (each image tested "
            "once, by the model that did not train on it)"
            + (f", averaged over {seeds} seeds" if seeds > 1 else "")
            + " ± the std of the folds' own test metrics"
        )
    else:
        internal = "internal: the mean over seeds (each on its own test split) ± the std over seeds"
    return (
        f"**Metric tables.** A cell is, {internal}; external: the mean over runs ± the std over runs. In "
        f"brackets a 95 % patient-bootstrap interval: whole patients resampled ({n_boot} resamples, one draw "
        "for tables of the same patients), each table's metric recomputed and averaged, percentile interval; "
        "resamples where a metric is undefined are left out. It covers which patients were drawn, the ± std "
        "covers retraining. A model with one prediction table (one run, or one seed's pooled folds) shows "
        "accuracy, precision, recall and specificity as k/n with a Wilson score interval on the images "
        "instead, which keeps its coverage on small sets and at 0 or 1."
    )


def methods_section(
    folds: int | None,
    seeds: int,
    n_boot: int,
    binary: bool,
    energy_images: int,
    lung_area: float | None,
    rules: list[str],
) -> list[str]:
    """The Methods section's paragraphs.

    Args:
        folds: K of a cross-validated sweep; None for train/val/test splits.
        seeds: the most seeds of a model.
        n_boot: bootstrap resamples.
        binary: two classes (otherwise a note says what is left out).
        energy_images: test images per model for the lung energy.
        lung_area: the mean share of the image the lung masks cover, None without masks.
        rules: the threshold rules the jobs chose their operating points by (none for older jobs).
    """
    unit = "runs (seed × fold)" if folds else "seeds"
    chosen = (
        f"; the operating-point table uses each run's threshold chosen on its validation split by "
        f"{', '.join(f'`{r}`' for r in rules)} (`eval.threshold_rule`), and reads sensitivity at a fixed "
        "specificity (and the reverse) off the ROC curve"
        if rules
        else ""
    )
    lines = [
        "## Methods\n",
        _cells(folds, seeds, n_boot) + "\n",
        "**Threshold.** Positive means a positive-class probability above 0.5 (the rule of the logged "
        f"metrics){chosen}.\n",
        "**Comparisons.** Raw and compared model of one backbone on the same test patients: a paired patient "
        f"bootstrap of the difference (averaged over seeds or runs; {n_boot} resamples, percentile interval, "
        "p = 2 × the smaller share of differences on one side of 0) and, for AUROC, DeLong's test (DeLong "
        "1988, fast form of Sun & Xu 2014; runs on the same images form one contrast, runs on other images "
        "count as independent). DeLong takes images as independent, the bootstrap resamples patients. With "
        f"≥ 2 {unit} per model, a paired t-test over them adds the spread over retraining.\n",
    ]
    if binary:
        lines.append(
            "**Curves and calibration.** ROC and precision-recall curves are averaged over runs at fixed "
            "false-positive rates (recalls), with a pointwise 95 % patient-bootstrap band. Brier score: mean "
            "squared error of the probability (patient-bootstrap interval); ECE: share-weighted gap between "
            "probability and observed frequency over 10 equal-width bins (mean over runs).\n"
        )
    else:
        lines.append(
            "With more than two classes only accuracy is bootstrapped (macro metrics: mean ± std as logged); "
            "curves, calibration and DeLong need two classes.\n"
        )
    lines.append(
        f"**Warnings.** Collapsed: a run gives one class to ≥ {100 * COLLAPSED_SHARE:.0f} % of a set's "
        "images "
        "at 0.5. Shortcut: a `lungs_removed` model's internal AUROC interval above 0.5. Does not carry over: "
        "an external AUROC interval below the internal one. Masks may remove the finding: the positive "
        f"class's median mask area ≥ {100 * SMALLER_BY:.0f} % smaller, Mann-Whitney p < {P_VALUE}.\n"
    )
    reference = (
        f"; the masks cover {lung_area:.3f} of the image, what an even CAM would score" if lung_area else ""
    )
    lines.append(
        "**Lung energy** (mean ± std over runs): the share of the Grad-CAM mass (predicted class) inside the "
        f"lung mask, over up to {energy_images} test images per model{reference}.\n"
    )
    return lines
