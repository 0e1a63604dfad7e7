"""covidseg.masks.area: the lung mask's area per class, and the warning when masks eat the finding
(issue 17: a segmenter trained on normal lungs leaves consolidated COVID lung outside its mask)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from covidseg.masks.area import P_VALUE, SMALLER_BY, area_by_class, markdown_table
from covidseg.outputs import layout, write_csv
from covidseg.report import build_report
from tests.report.test_report import seed_sweep


def mask_stats(covid_area: float, normal_area: float, n: int = 40, seed: int = 0) -> pd.DataFrame:
    """mask_stats.csv rows: n images per class, lung-area fractions around the given medians."""
    rng = np.random.default_rng(seed)
    rows = [
        {"path": f"{label}/{i}.png", "label": label, "patient_id": f"{label}{i}", "lung_area_fraction": area}
        for label, centre in (("covid", covid_area), ("normal", normal_area))
        for i, area in enumerate(rng.normal(centre, 0.02, n).clip(0.01, 0.99))
    ]
    return pd.DataFrame(rows)


def test_smaller_positive_masks_are_measured_and_warned_about():
    summary = area_by_class(mask_stats(0.30, 0.40), "covid")
    assert summary.median("covid") == pytest.approx(0.30, abs=0.01)
    assert summary.median("normal") == pytest.approx(0.40, abs=0.01)
    assert summary.relative_difference == pytest.approx(0.25, abs=0.03)
    assert summary.p_value < 1e-6 and summary.masks_eat_the_finding
    assert "'covid' images are 2" in summary.warning() and "% smaller" in summary.warning()
    metrics = summary.metrics()
    assert set(metrics) == {
        "mask_area/covid/median",
        "mask_area/normal/median",
        "mask_area/relative_difference",
        "mask_area/p_value",
    }
    assert re.search(r"\| covid \| 40 \| 0\.\d{3} \| 0\.\d{3}–0\.\d{3} \|", markdown_table(summary))


@pytest.mark.parametrize(
    ("covid", "normal", "n"),
    [
        (0.40, 0.40, 40),  # no difference
        (0.38, 0.40, 40),  # significant with this many images, but under SMALLER_BY: not worth a warning
        (0.45, 0.40, 40),  # larger positive masks (e.g. a segmenter that spills over opacities) are no loss
        (0.30, 0.40, 2),  # too few images to tell
    ],
)
def test_no_warning_without_a_clear_and_significant_loss(covid, normal, n):
    summary = area_by_class(mask_stats(covid, normal, n), "covid")
    assert not summary.masks_eat_the_finding and summary.warning() is None
    assert (
        summary.relative_difference < SMALLER_BY
        or not summary.p_value < P_VALUE
        or math.isnan(summary.p_value)
    )


def test_nothing_to_compare_without_both_sides():
    only_covid = mask_stats(0.3, 0.4).query("label == 'covid'")
    assert area_by_class(only_covid, "covid") is None
    assert area_by_class(mask_stats(0.3, 0.4), "pneumonia") is None


def test_the_report_shows_the_area_per_class_and_warns_first(tmp_path):
    sweep = seed_sweep(tmp_path / "sweep")
    stats = mask_stats(0.28, 0.40)
    for job in sorted(sweep.iterdir()):
        if (job / layout.METRICS).is_file() and "segmented" in (job / ".hydra" / "config.yaml").read_text():
            write_csv(stats, job / layout.MASK_STATS)
    text = build_report(sweep, n_boot=200).read_text()
    assert "## Lung mask area per class" in text and "| covid | 40 | 0.2" in text
    warning = text.index("**Masks may remove the finding:**")
    assert text.index("## Summary") < warning < text.index("## Internal test set")
    assert warning < text.index("## Lung mask area per class")
    assert warning < text.index("Segmented − raw") if "Segmented − raw" in text else True


def test_the_report_has_no_area_section_without_mask_stats(tmp_path):
    text = build_report(seed_sweep(tmp_path / "sweep"), n_boot=200).read_text()
    assert "Lung mask area per class" not in text and "masks may remove" not in text
