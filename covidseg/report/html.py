"""report.html: report.md as one self-contained page to share, its figures inlined as base64 PNGs.

Python-Markdown (the ``markdown`` package, also what the documentation site is built with) turns the
Markdown into HTML; its ``tables`` extension reads the report's tables and keeps their ``<br>``.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

# The source of an <img> of a file beside the report, as Python-Markdown writes it: src="name.png"
_SOURCE = re.compile(r'src="([^":/]+\.png)"')
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 75rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; height: auto; display: block; margin: 0.8rem 0; }
code { background: #f4f4f4; padding: 0 0.2rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
"""


def inline_figures(page: str, folder: Path) -> str:
    """`page` (HTML) with the source of every <img> of a PNG in `folder` replaced by the image as a data URI;
    images that are not there are left as they are. Done on the HTML rather than the Markdown, which
    Python-Markdown would otherwise scan through megabytes of base64."""

    def embed(match: re.Match) -> str:
        path = folder / html.unescape(match[1])
        if not path.is_file():
            return match[0]
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    return _SOURCE.sub(embed, page)


def write_html(report_md: Path, out: Path, title: str) -> Path:
    """Write `out`: the Markdown report `report_md` as one HTML page with its figures inlined.

    Args:
        report_md: report.md; its figures are read from its folder.
        out: the HTML file to write.
        title: the page title.

    Returns:
        `out`.
    """
    body = markdown.markdown(report_md.read_text(), extensions=["tables"], output_format="html")
    out.write_text(
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"{inline_figures(body, report_md.parent)}\n</body>\n</html>\n"
    )
    return out
