"""report.html: the same content as report.md in one file, figures inlined."""

from __future__ import annotations

import base64
import re

from covidseg.report.html import inline_figures


def test_report_html_has_every_table_and_figure_inline(issue19_report):
    markdown = (issue19_report / "report.md").read_text()
    page = (issue19_report / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>covidseg report: sweep</title>" in page
    assert page.count("<table>") == markdown.count("\n|---")
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)
    sources = re.findall(r'<img alt="[^"]*" src="([^"]*)"', page)
    assert len(sources) == len(figures) >= 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    roc = sources[figures.index("roc_pr.png")].split(",", 1)[1]
    assert base64.b64decode(roc) == (issue19_report / "roc_pr.png").read_bytes()
    assert "&lt; 0.001" in page and re.search(r"<td>[^<]*<br>\[", page)  # p values and table cells as written
    assert "## " not in page and "**Warnings**" not in page


def test_inline_figures_leaves_missing_images_alone(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    page = inline_figures('<img alt="a" src="a.png" /> <img alt="b" src="b.png" />', tmp_path)
    assert 'src="data:image/png;base64,iVBORw=="' in page and 'src="b.png"' in page
