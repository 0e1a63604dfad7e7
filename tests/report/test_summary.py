"""The report reads in two minutes: a summary first (answer with intervals, DeLong beside the bootstrap,
warnings), tables without empty rows, Methods once at the end, every number also in a CSV, model cards."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from covidseg.errors import UserError
from covidseg.masks.area import format_p
from covidseg.report import build_report
from covidseg.report.collect import collect_jobs
from covidseg.report.model_card import _threshold_origin
from covidseg.report.summary import unmet_rule_warnings
from covidseg.stats.binary import proportion_counts, wilson_interval
from covidseg.stats.delong import delong_pooled_difference
from tests.report.conftest import MODELS, THRESHOLD
from tests.report.test_report import dataset, seed_sweep, table_rows, write_job


@pytest.fixture(scope="module")
def text(issue19_report) -> str:
    return (issue19_report / "report.md").read_text()


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ")[0]


def test_the_summary_comes_first_and_answers_on_every_test_set(issue19_report, text):
    assert text.index("## Summary") < text.index("**Warnings**") < text.index("## Internal test set")
    rows = table_rows(text, "**Answer**")
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    assert [c[:3] for c in cells] == [
        [s, "resnet18", i] for s in ("internal test", "ext") for i in ("segmented", "lungs_removed")
    ]
    # DeLong beside the bootstrap: the pooled DeLong p of raw and segmented predictions on the external set
    job = {m: issue19_report / str(i) for i, m in enumerate(MODELS)}
    pairs = [tuple(pd.read_csv(job[("resnet18", i)] / "predictions_ext.csv") for i in ("raw", "segmented"))]
    assert cells[2][7] == format_p(delong_pooled_difference(pairs)["p_value"])
    assert cells[2][8] == "lower with segmented" and cells[0][8] == "no clear difference"
    for row in cells:
        assert re.fullmatch(r"[+−]\d\.\d{3} \[[+−]\d\.\d{3}, [+−]\d\.\d{3}\]", row[5]), row
        assert all(re.fullmatch(r"< 0\.001|\d\.\d{3}", p) for p in row[6:8]), row


def test_warnings_name_the_collapsed_model_the_shortcut_and_the_failure_to_carry_over(text):
    warnings = section(text, "**Warnings**").split("\n## ")[0]
    assert (
        "**Collapsed model:** `densenet121` raw calls every image normal (internal test: 1 of 1" in warnings
    )
    assert "operating-point table" in warnings  # the jobs chose one: the reader is sent there
    assert "**Shortcut:** `resnet18` with the lungs removed still reaches AUROC" in warnings
    assert "**Does not carry over:** `resnet18` segmented" in warnings and "(below chance)" in warnings
    assert "No shortcut control" not in warnings


def test_no_empty_rows_p_values_as_readers_expect_and_methods_once_at_the_end(text):
    assert "[–, –]" not in text
    for heading in ("### Compared − raw\n", "### Compared − raw on `ext`"):
        for row in table_rows(text, heading):
            p_bootstrap, p_delong = (c.strip() for c in row.split("|")[8:10])
            assert re.fullmatch(r"< 0\.001|\d\.\d{3}", p_bootstrap) and p_bootstrap != "0.000", row
            assert p_delong == "" if "AUROC" not in row else re.fullmatch(r"< 0\.001|\d\.\d{3}", p_delong)
    assert text.count("seed-level tests need ≥ 2 seeds") == 2  # once per test set, no t-test columns
    assert "p (paired t)" not in text
    assert "Per source" not in text  # the external set has one source
    assert text.count("## Methods") == 1 and text.index("## Methods") > text.index("## Split sizes")
    assert text.count("patient-bootstrap interval: whole patients") == 1
    assert "`youden`" in section(text, "## Methods")


def test_single_runs_show_counts_and_wilson_intervals(issue19_report, text):
    row = next(r for r in table_rows(text, "## Internal test set") if r.startswith("| resnet18 | raw |"))
    recall = row.split("|")[6].strip()
    pred = pd.read_csv(issue19_report / "0" / "predictions.csv")
    k, n = proportion_counts("recall", pred["target"], pred["prob_covid"])
    low, high = wilson_interval(k, n)
    assert recall == f"{k / n:.3f} ({k}/{n})<br>[{low:.3f}, {high:.3f}]"


def test_the_operating_point_table_reads_the_jobs_threshold(issue19_report, text):
    table = section(text, "## Calibration and operating point").split("| Threshold |")[1]
    op = [r for r in table.splitlines()[2:] if r.startswith("| ")]
    assert all(f"| {THRESHOLD:.3f} |" in r for r in op)
    assert len(op) == 2 * len(MODELS)  # internal and external
    pred = pd.read_csv(issue19_report / "3" / "predictions.csv")  # densenet121 raw
    k, n = proportion_counts("recall", pred["target"], pred["prob_covid"], THRESHOLD)
    first = next(r for r in op if r.startswith("| internal test | densenet121 | raw |"))
    assert f"({k}/{n})" in first.split("|")[5]


def test_every_number_is_in_a_csv_and_results_keeps_its_columns(issue19_report):
    results = pd.read_csv(issue19_report / "results.csv")
    kept = ["job", "dir", "backbone", "model", "input", "seed", "status", "test/acc", "test/auroc", "folds"]
    assert {*kept, "lung_energy", "external/ext/auroc", "operating_point/threshold"} <= set(results)
    summary = pd.read_csv(issue19_report / "summary.csv")
    recall = summary.query("test_set == 'internal test' and backbone == 'resnet18' and input == 'raw'")
    recall = recall.set_index("metric").loc["recall"]
    assert recall["interval"] == "wilson" and recall["trials"] > 0 and not np.isnan(recall["boot_low"])
    assert {"brier", "ece"} <= set(summary["metric"])
    compared = pd.read_csv(issue19_report / "comparisons.csv")
    auroc = compared[compared["metric"] == "AUROC"]
    assert len(auroc) == 4 and auroc["p_delong"].between(0, 1).all() and compared["p_delong"].isna().sum()


def test_a_model_card_per_model_with_its_failure_modes(issue19_report):
    cards = {p.name: p.read_text() for p in (issue19_report / "model_cards").glob("*.md")}
    assert sorted(cards) == sorted(f"{b}_{i}.md" for b, i in MODELS)
    card = cards["densenet121_raw.md"]
    assert "**Research use only.**" in card and "Threshold: 0.4 (rule `youden`, chosen on validation)" in card
    assert [r.split("|")[1].strip() for r in table_rows(card, "## Metrics")] == ["internal test split", "ext"]
    assert "Collapsed model" in card and "Collapsed model" not in cards["resnet18_raw.md"]
    assert "Does not carry over" in cards["resnet18_segmented.md"]


def test_jobs_of_different_classes_are_refused(tmp_path):
    sweep = seed_sweep(tmp_path / "sweep")
    config = sweep / "5" / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.data.classes = ["normal", "pneumonia", "covid"]
    OmegaConf.save(cfg, config)
    with pytest.raises(UserError, match=r"different classes .*'pneumonia', 'covid'\] in jobs \['5'\]"):
        collect_jobs(sweep)
    assert json.loads((sweep / "5" / "metrics.json").read_text())  # nothing was touched


def test_a_sweep_of_raw_jobs_only_says_it_compares_nothing(tmp_path):
    for seed in range(2):
        write_job(tmp_path / "sweep", seed, "resnet18", "raw", seed, dataset().iloc[: 30 + seed])
    text = build_report(tmp_path / "sweep", n_boot=20).read_text()
    summary = section(text, "## Summary")
    assert "**Question:** none: every job of this sweep saw raw input" in summary
    assert "_Nothing to compare" in summary and "No shortcut control" in summary
    assert "p (bootstrap)" not in text and (tmp_path / "sweep" / "model_cards" / "resnet18_raw.md").is_file()


def test_a_threshold_rule_not_met_on_validation_is_a_warning_naming_the_model():
    jobs = pd.DataFrame(
        {
            "backbone": ["resnet18", "resnet18", "densenet121"],
            "input": ["raw", "raw", "segmented"],
            "operating_point/requested_rule": ["youden", None, None],
            "operating_point/note": ["the best point calls every validation image one class", None, None],
        }
    )
    (found,) = unmet_rule_warnings(jobs)
    assert found.models == {("resnet18", "raw")}
    assert (
        "`resnet18` raw: 1 run(s) asked for youden" in found.text and "every validation image" in found.text
    )
    assert unmet_rule_warnings(jobs.drop(columns=["operating_point/requested_rule"])) == []
    assert unmet_rule_warnings(jobs.iloc[1:]) == []


@pytest.mark.parametrize(
    ("metrics", "stored", "expected"),
    [
        (
            {"operating_point/rule": "youden", "operating_point/chosen_on": "val"},
            True,
            "chosen on validation",
        ),
        (
            {"operating_point/rule": "fixed", "operating_point/chosen_on": "eval.threshold"},
            True,
            "not chosen",
        ),
        (
            {"operating_point/rule": "fixed", "operating_point/requested_rule": "spec@0.9"},
            True,
            "`spec@0.9` could not be met",
        ),
        ({}, False, "stored no operating point"),
    ],
)
def test_a_model_card_says_where_its_threshold_comes_from(metrics, stored, expected):
    assert expected in _threshold_origin(pd.Series(metrics, dtype=object), stored)
