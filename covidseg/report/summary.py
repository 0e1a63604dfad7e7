"""The report's summary block, first in report.md: the question, the answer on the internal test set and on
every external set (AUROC, segmented − raw, with intervals and both tests) and the warnings a reader must see
before any table: models that collapsed to one class, the shortcut control, models that do not carry over to
another hospital, and masks that remove the finding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from covidseg.masks.area import AreaByClass, format_p
from covidseg.models.metrics import predicted_positive
from covidseg.report.pooling import TestSet
from covidseg.report.tables import fmt, markdown_table
from covidseg.stats import prob_columns

# A model that gives one class to at least this share of a test set's images has collapsed: its threshold
# metrics describe the threshold, not the model.
COLLAPSED_SHARE = 0.98
AUROC = "AUROC"


@dataclass(frozen=True)
class Finding:
    """A warning of the summary and the (model, input) pairs it is about (none: the whole sweep); the model
    cards repeat a model's findings as its known failure modes."""

    text: str
    models: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class SetResult:
    """What the summary reads of one test set: its label, the models' summary table (summary_table), the
    paired bootstrap rows (paired_bootstrap) and the prediction tables behind them."""

    label: str
    summary: pd.DataFrame
    boot: pd.DataFrame
    test_sets: dict[tuple[str, str], TestSet]
    prefix: str


def _auroc_cell(result: SetResult, model: str, input_: str) -> dict | None:
    rows = result.summary[(result.summary["backbone"] == model) & (result.summary["input"] == input_)]
    cell = rows.iloc[0].get(result.prefix + "auroc") if len(rows) else None
    return cell if isinstance(cell, dict) and not math.isnan(cell["estimate"]) else None


def _with_interval(cell: dict | None) -> str:
    if cell is None:
        return "–"
    if math.isnan(cell["ci_low"]):
        return fmt(cell["estimate"])
    return f"{fmt(cell['estimate'])} [{fmt(cell['ci_low'])}, {fmt(cell['ci_high'])}]"


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "−") + fmt(abs(x))


def verdict(low: float, high: float, input_: str) -> str:
    """The answer in words: higher or lower with the compared input when the interval excludes 0."""
    if low > 0:
        return f"higher with {input_}"
    if high < 0:
        return f"lower with {input_}"
    return "no clear difference"


def answer_table(results: list[SetResult]) -> str:
    """Per test set, model and compared input: AUROC raw and compared with intervals, their difference with
    the paired bootstrap's interval and p, DeLong's p and the verdict; "" when nothing was paired."""
    rows = []
    for result in results:
        boot = result.boot[result.boot["metric"] == AUROC] if len(result.boot) else result.boot
        for _, b in boot.iterrows():
            if not b["n_valid"]:
                continue
            raw = _auroc_cell(result, b["backbone"], "raw")
            other = _auroc_cell(result, b["backbone"], b["input"])
            rows.append(
                [
                    result.label,
                    b["backbone"],
                    b["input"],
                    _with_interval(raw),
                    _with_interval(other),
                    f"{_signed(b['observed'])} [{_signed(b['ci_low'])}, {_signed(b['ci_high'])}]",
                    format_p(b["p_value"]),
                    format_p(b.get("p_delong", math.nan)),
                    verdict(b["ci_low"], b["ci_high"], b["input"]),
                ]
            )
    header = ["Test set", "Backbone", "Compared", "AUROC raw", "AUROC compared", "Δ AUROC [95 % CI]"]
    return markdown_table([*header, "p (bootstrap)", "p (DeLong)", "Verdict"], rows) if rows else ""


def predicted_share(table: pd.DataFrame) -> float:
    """The share of a binary prediction table's images predicted positive at the 0.5 rule."""
    return float(np.mean(predicted_positive(table[prob_columns(table)[1]].to_numpy(dtype=float))))


def collapsed_warnings(
    results: list[SetResult], classes: list[str], operating_point: bool = False
) -> list[Finding]:
    """One warning per model whose runs give one class to at least COLLAPSED_SHARE of a test set's images
    (binary tasks), naming the sets and how many of its runs did.

    Args:
        results: the test sets.
        classes: data.classes (the positive class last).
        operating_point: whether the report has an operating-point table to point to.
    """
    found: dict[tuple[str, str, str], list[str]] = {}
    for result in results:
        for (model, input_), test_set in result.test_sets.items():
            tables = list(test_set.tables.values())
            if not tables or len(prob_columns(tables[0])) != 2:
                continue
            shares = [predicted_share(t) for t in tables]
            for side, label in ((1.0, classes[-1]), (0.0, classes[0])):
                hits = [s for s in shares if abs(s - side) <= 1 - COLLAPSED_SHARE]
                if hits:
                    how = "every image" if all(abs(s - side) < 1e-12 for s in hits) else "≥ 98 % of images"
                    found.setdefault((model, input_, f"{how} {label}"), []).append(
                        f"{result.label}: {len(hits)} of {len(tables)} run(s)"
                    )
    judge = "AUROC, the curves and the operating-point table" if operating_point else "AUROC and the curves"
    return [
        Finding(
            f"**Collapsed model:** `{model}` {input_} calls {what} ({'; '.join(where)}). Its accuracy, "
            f"precision, recall, specificity and F1 at threshold 0.5 say nothing about it: judge it by "
            f"{judge}.",
            frozenset({(model, input_)}),
        )
        for (model, input_, what), where in found.items()
    ]


def shortcut_warnings(results: list[SetResult]) -> list[Finding]:
    """The shortcut control: what models that never see the lungs (lungs_removed) reach on the internal
    test set, or that the sweep has no such control; and every model whose external AUROC falls clearly
    below its internal one."""
    internal, lines = results[0], []
    removed = internal.summary[internal.summary["input"] == "lungs_removed"]
    if not len(removed):
        lines.append(
            Finding(
                "**No shortcut control:** this sweep has no `data.input=lungs_removed` jobs (models that see "
                "everything but the lungs), so nothing here measures what the images give away outside the "
                "lungs."
            )
        )
    for _, row in removed.iterrows():
        cell = _auroc_cell(internal, row["backbone"], "lungs_removed")
        if cell is None:
            continue
        if cell["ci_low"] > 0.5:
            text = (
                f"**Shortcut:** `{row['backbone']}` with the lungs removed still reaches AUROC "
                f"{_with_interval(cell)} on the internal test set: the images carry class information "
                "outside the lungs (labels, devices, sources), which models on raw images can use."
            )
            lines.append(
                Finding(text, frozenset({(row["backbone"], "raw"), (row["backbone"], "lungs_removed")}))
            )
        else:
            lines.append(
                Finding(
                    f"Shortcut control: `{row['backbone']}` with the lungs removed is not clearly above "
                    f"chance (AUROC {_with_interval(cell)})."
                )
            )
    for result in results[1:]:
        for model, input_ in result.test_sets:
            inside, outside = _auroc_cell(internal, model, input_), _auroc_cell(result, model, input_)
            if inside is None or outside is None or not outside["ci_high"] < inside["ci_low"]:
                continue
            chance = " (below chance)" if outside["ci_high"] < 0.5 else ""
            text = (
                f"**Does not carry over:** `{model}` {input_} has AUROC {_with_interval(inside)} internally "
                f"but {_with_interval(outside)} on {result.label}{chance}: what it learned does not hold at "
                "another hospital (shortcuts of the training sources are the usual cause)."
            )
            lines.append(Finding(text, frozenset({(model, input_)})))
    return lines


def unmet_rule_warnings(jobs: pd.DataFrame) -> list[Finding]:
    """One warning per model with runs whose threshold rule (eval.threshold_rule) could not be met on
    validation: covidseg.inference.thresholds then falls back to the fixed threshold and records the rule it
    was asked for (operating_point/requested_rule) and why (operating_point/note)."""
    if "operating_point/requested_rule" not in jobs:
        return []
    unmet = jobs[jobs["operating_point/requested_rule"].notna()]
    found = []
    model_column = "model" if "model" in unmet else "backbone"  # the report's model names (collect_jobs)
    for (model, input_), runs in unmet.groupby([model_column, "input"], sort=False):
        rules = ", ".join(sorted(set(runs["operating_point/requested_rule"].astype(str))))
        note = runs["operating_point/note"].dropna().astype(str)
        text = (
            f"**Threshold rule not met:** `{model}` {input_}: {len(runs)} run(s) asked for {rules} on "
            f"validation, which could not be met{f' ({note.iloc[0]})' if len(note) else ''}; their threshold "
            "metrics use the fixed threshold (operating_point/threshold in metrics.json)."
        )
        found.append(Finding(text, frozenset({(model, input_)})))
    return found


def findings(
    results: list[SetResult],
    classes: list[str],
    mask_area: AreaByClass | None,
    failed: int,
    operating_point: bool = False,
    jobs: pd.DataFrame | None = None,
) -> list[Finding]:
    """Every warning of the summary, in order: collapsed models, threshold rules not met on validation, the
    shortcut control, models that do not carry over, masks that remove the finding, failed jobs.

    Args:
        results: the internal test set first, then every external set.
        classes: data.classes (the positive class last).
        mask_area: the lung area per class of the sweep's masks, None without masked jobs.
        failed: the number of failed jobs.
        operating_point: whether the report has an operating-point table.
        jobs: the finished jobs with their metrics (collect_jobs), for the threshold rules.
    """
    found = collapsed_warnings(results, classes, operating_point)
    found += unmet_rule_warnings(jobs if jobs is not None else pd.DataFrame()) + shortcut_warnings(results)
    if mask_area is not None and mask_area.warning():
        masked = {g for r in results for g in r.test_sets if g[1] != "raw"}
        found.append(Finding(f"**Masks may remove the finding:** {mask_area.warning()}", frozenset(masked)))
    if failed:
        found.append(Finding(f"**{failed} job(s) failed** and are left out (see Failed jobs)."))
    return found


def _no_answer(results: list[SetResult]) -> str:
    """Why the answer table is empty: more than two classes (AUROC is the binary answer), or no pairs."""
    tables = [t for r in results for ts in r.test_sets.values() for t in ts.tables.values()]
    if tables and all(len(prob_columns(t)) > 2 for t in tables):
        return (
            "_The AUROC answer needs two classes; with more, compare raw and masked input by the accuracy "
            "comparison of each test set below._"
        )
    return "_Nothing to compare: no model has both raw and compared runs on a common test set._"


def summary_block(question: str, results: list[SetResult], found: list[Finding]) -> list[str]:
    """The report's "Summary" section: the question, the answer table and the warnings.

    Args:
        question: the sentence that states what the sweep compares.
        results: the internal test set first, then every external set.
        found: the warnings (findings).
    """
    answer = answer_table(results)
    return [
        "## Summary\n",
        f"**Question:** {question}\n",
        "**Answer** (AUROC, mean over runs, 95 % patient-bootstrap intervals; Δ = compared − raw on the same "
        "test patients):\n",
        answer or _no_answer(results),
        "",
        "**Warnings**\n",
        *([f"- {f.text}" for f in found] or ["- None."]),
        "",
    ]
