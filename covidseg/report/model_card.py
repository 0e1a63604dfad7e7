"""A short model card per model of the sweep (backbone × input): the checkpoint of its run with the best
validation AUROC, the data it was trained on, its intended use (research only) and its metrics on the
internal test split and every external set, with intervals, and its known failure modes (the report's
warnings that concern it)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from covidseg.outputs import layout
from covidseg.report.calibration import RULE_KEY, THRESHOLD_KEY
from covidseg.report.collect import compared_groups, finished, select_jobs
from covidseg.report.pooling import read_predictions
from covidseg.report.summary import Finding
from covidseg.report.tables import BOOT_SEED, fmt, markdown_table
from covidseg.stats import bootstrap_patient_metric, prob_columns
from covidseg.stats.binary import proportion_counts, wilson_interval
from covidseg.stats.calibration import brier_score

INTENDED_USE = (
    "**Research use only.** Not a medical device: not for diagnosis, triage or any clinical decision. For "
    "studying whether lung segmentation changes what a chest X-ray classifier learns."
)


def best_run(runs: pd.DataFrame) -> pd.Series:
    """The run with the highest validation AUROC (the first run without one): the test sets do not choose."""
    if "val/auroc" in runs and runs["val/auroc"].notna().any():
        return runs.loc[pd.to_numeric(runs["val/auroc"]).idxmax()]
    return runs.iloc[0]


def _proportion(table: pd.DataFrame, metric: str, threshold: float) -> str:
    k, n = proportion_counts(metric, table["target"], table[prob_columns(table)[1]], threshold)
    low, high = wilson_interval(k, n)
    return "–" if not n else f"{fmt(k / n)} ({k}/{n}) [{fmt(low)}, {fmt(high)}]"


def _metrics_row(label: str, table: pd.DataFrame, threshold: float, n_boot: int) -> list[str]:
    auroc = bootstrap_patient_metric(table, "auroc", n_boot, BOOT_SEED)
    ci = "" if math.isnan(auroc["ci_low"]) else f" [{fmt(auroc['ci_low'])}, {fmt(auroc['ci_high'])}]"
    return [
        label,
        f"{len(table)} ({table['patient_id'].nunique()})",
        fmt(auroc["estimate"]) + ci,
        _proportion(table, "recall", threshold),
        _proportion(table, "specificity", threshold),
        fmt(brier_score(table["target"], table[prob_columns(table)[1]])),
    ]


def _data_lines(job: pd.Series) -> list[str]:
    path = Path(job["dir"]) / layout.CONFIG_RESOLVED
    cfg = OmegaConf.load(path) if path.is_file() else OmegaConf.load(Path(job["dir"]) / layout.HYDRA_CONFIG)
    data = cfg.data
    segmenter = OmegaConf.select(cfg, "segmenter.ckpt_path", default=None)
    masked = f", masks by the segmenter `{segmenter}`" if data.input != "raw" and segmenter else ""
    return [
        f"- Task: {' vs '.join(data.classes)} on chest X-rays (positive class: {data.classes[-1]}).",
        f"- Input: `{data.input}` at {data.image_size} px{masked}.",
        f"- Training data: `{data.get('root')}`, {int(job.get('n_train', 0))} training images of "
        f"{int(job.get('patients_train', 0))} patients (patient-level split, seed {job['seed']}).",
    ]


def _threshold_origin(job: pd.Series, stored: bool) -> str:
    """Where a card's threshold comes from: a rule chosen on validation, a fixed one (asked for, or the
    fallback of a rule validation could not meet), or the default of runs that stored none."""
    if not stored:
        return " (the fixed default: the run stored no operating point)."
    requested = job.get("operating_point/requested_rule")
    if pd.notna(requested):
        return f" (fixed: the rule `{requested}` could not be met on validation)."
    if job.get("operating_point/chosen_on") == "val":
        return f" (rule `{job.get(RULE_KEY)}`, chosen on validation)."
    return f" (rule `{job.get(RULE_KEY)}`, not chosen on validation)."


def write_model_cards(
    jobs: pd.DataFrame, external: list[str], found: list[Finding], out_dir: Path, n_boot: int
) -> list[str]:
    """Write model_cards/<model>_<input>.md for every model with a finished run.

    Args:
        jobs: the sweep's jobs (collect_jobs).
        external: the external sets the report covers.
        found: the report's warnings (summary.findings).
        out_dir: the sweep folder.
        n_boot: bootstrap resamples of the AUROC intervals.

    Returns:
        The cards' paths relative to `out_dir`.
    """
    folder = out_dir / layout.MODEL_CARDS
    folder.mkdir(exist_ok=True)
    written = []
    ok = finished(jobs)
    for model, input_ in compared_groups(jobs):
        job = best_run(select_jobs(ok, model, input_))
        chosen = pd.notna(job.get(THRESHOLD_KEY))
        threshold = float(job[THRESHOLD_KEY]) if chosen else 0.5
        table = read_predictions(job, None)
        if len(prob_columns(table)) != 2:
            continue  # the card's sensitivity, specificity and Brier score need a binary task
        rows = [_metrics_row("internal test split", table, threshold, n_boot)]
        for name in external:
            if (Path(job["dir"]) / layout.predictions_file(name)).is_file():
                rows.append(_metrics_row(name, read_predictions(job, name), threshold, n_boot))
        fold = "" if pd.isna(job["fold"]) else f", fold {job['fold']}"
        modes = [f"- {f.text}" for f in found if not f.models or (model, input_) in f.models]
        lines = [
            f"# Model card: {model}, {input_} input\n",
            INTENDED_USE + "\n",
            f"- Checkpoint: `{job['dir']}/{layout.CHECKPOINTS}/{layout.BEST}` (job {job['job']}, seed "
            f"{job['seed']}{fold}: the run of this model with the highest validation AUROC"
            + (f", {float(job['val/auroc']):.3f}" if pd.notna(job.get("val/auroc")) else "")
            + ").",
            *_data_lines(job),
            f"- Threshold: {threshold:g}" + _threshold_origin(job, chosen),
            "",
            "## Metrics of this checkpoint\n",
            "AUROC with a 95 % patient-bootstrap interval; sensitivity and specificity at the threshold, "
            "with "
            "counts and a 95 % Wilson interval; Brier score (0 is perfect, 0.25 a constant 0.5).\n",
            markdown_table(
                ["Test set", "Images (patients)", "AUROC", "Sensitivity", "Specificity", "Brier"], rows
            ),
            "",
            "## Known failure modes\n",
            *(modes or ["- None found by the report's checks."]),
            "- Tested only on the sets above: other hospitals, scanners, views and populations are untested.",
            "",
        ]
        name = re.sub(r"[^\w.-]+", "_", f"{model}_{input_}") + ".md"
        (folder / name).write_text("\n".join(lines))
        written.append(f"{layout.MODEL_CARDS}/{name}")
    return written
