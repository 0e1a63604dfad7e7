"""The report's ROC / precision-recall figures (one per test set, a row per backbone) and reliability
diagrams, embedded where the reader needs them."""

from __future__ import annotations

from PIL import Image

from covidseg.report.curves import figure_name


def test_roc_pr_per_test_set_and_calibration_figures_are_written_and_embedded(issue19_report):
    text = (issue19_report / "report.md").read_text()
    internal = text.split("## Internal test set")[1].split("\n## ")[0]
    external = text.split("## External test set `ext`")[1].split("\n## ")[0]
    assert "(roc_pr.png)" in internal and "(roc_pr_ext.png)" in external
    assert "(calibration.png)" in text.split("## Calibration and operating point")[1].split("\n## ")[0]
    for name in ("roc_pr.png", "roc_pr_ext.png", "calibration.png", "external_auroc.png"):
        with Image.open(issue19_report / name) as image:
            image.verify()
    # a row of ROC and PR panels per backbone (resnet18, densenet121); calibration: backbones x inputs
    with Image.open(issue19_report / "roc_pr.png") as image:
        assert image.height > image.width
    with Image.open(issue19_report / "calibration.png") as image:
        assert image.width > image.height


def test_figure_names_are_safe_file_names():
    assert figure_name("roc_pr", None) == "roc_pr.png"
    assert figure_name("roc_pr", "site a/b") == "roc_pr_site_a_b.png"
