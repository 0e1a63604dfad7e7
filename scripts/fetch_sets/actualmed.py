"""external-actualmed/: the reference copy's 44 images of the Actualmed COVID-19 chest X-ray data set
(github agchung/Actualmed-COVID-chestxray-dataset, ``metadata.csv`` + ``images/``), COVID-19 vs "No finding",
in covid-cxr's layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fetch_sets.common import (
    Fetch,
    check_counts,
    download,
    download_first,
    download_repo_files,
    finish,
    prepare,
    raw_urls,
    read_table,
    warn,
)
from fetch_sets.convert import convert_image
from fetch_sets.covid_cxr import COVID_COLUMNS

ACTUALMED_REPO = "agchung/Actualmed-COVID-chestxray-dataset"
SOURCE = "Actualmed (agchung)"
# Actualmed finding (compared case-insensitively) -> our label; "Inconclusive" rows have an empty finding.
LABELS = {"covid-19": "covid", "no finding": "normal"}
EXPECTED = {"covid": 26, "normal": 18, "patients": 39}
# The images of the reference copy: a subset of the repository's 58 COVID-19 and 127 "No finding" images
# that no rule in the metadata reproduces, so it is listed (the rest stays unseen, as for a hidden test).
SELECTION = (
    "CR.1.2.840.113564.1722810170.20200319202613984410.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200320011259312440.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200320072856343530.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200320170359875720.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200320183426328780.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200321001546031810.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200321002029359840.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200321123520296900.1003000225002.png",
    "CR.1.2.840.113564.1722810170.202003211812003285.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200322160314468140.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200324165957625920.1003000225002.png",
    "CR.1.2.840.113564.1722810170.202003241816485934.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200325010134750210.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200325012424140230.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200326010813390400.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200327151518468570.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200327154027828590.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200329163846250860.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200329171322703880.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200330111806125940.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200402113955515630.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200403010103781780.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200403211237078970.1003000225002.png",
    "CR.1.2.840.113564.1722810170.202004040240155151.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200408094743609850.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200416020138312830.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200416105826265860.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200416110930703890.1003000225002.png",
    "CR.1.2.840.113564.1722810170.20200418154808640220.1003000225002.png",
    "CR.1.2.840.113564.192168196.2020031913094890017.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020031914133530635.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020031914434008949.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020032009520943077.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020032712415994976.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020033016123149069.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020040117583329780.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020040314541260251.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020040708262888222.1203801020003.png",
    "CR.1.2.840.113564.192168196.2020041316410681120.1203801020003.png",
    "DX.1.2.840.113564.1722810162.20200320155115417540.1203801020003.png",
    "DX.1.2.840.113564.1722810162.20200327130648390830.1203801020003.png",
    "DX.1.2.840.113564.1722810162.20200327135133580890.1203801020003.png",
    "DX.1.2.840.113564.1722810162.20200330155549529100.1203801020003.png",
    "DX.1.2.840.113564.1722810162.20200420135116095500.1203801020003.png",
)


def select_images(table: pd.DataFrame, selection: tuple[str, ...] = SELECTION) -> pd.DataFrame:
    """The selected images' rows of the Actualmed metadata, in its order, with our label.

    Args:
        table: the Actualmed metadata (columns patientid, finding, view, imagename).
        selection: the image names to keep.

    Returns:
        ``imagename``, ``label``, ``patient_id`` (``actualmed-<patientid>``) and ``view``; a selected image
        missing from the metadata or with another finding is warned about and left out.
    """
    wanted, rows = set(selection), []
    for name, patient, finding, view in zip(
        table["imagename"], table["patientid"], table["finding"], table["view"]
    ):
        if name not in wanted:
            continue
        wanted.discard(name)  # a file listed twice: the first row wins
        label = LABELS.get(finding.lower())
        if label is None:
            warn(f"{name}: finding {finding!r} in the Actualmed metadata, not COVID-19/No finding; skipped.")
            continue
        rows.append([name, label, f"actualmed-{patient}", view])
    for name in sorted(wanted):
        warn(f"{name} is not in the Actualmed metadata; skipped.")
    return pd.DataFrame(rows, columns=["imagename", "label", "patient_id", "view"])


def build_external_actualmed(selected: pd.DataFrame, images: dict[str, Path], out: Path) -> pd.DataFrame:
    """Convert the selected images to ``images/<label>/<stem>.png``; return the metadata table (not saved).

    Args:
        selected: ``select_images``' table.
        images: repository path (``images/<name>``) -> downloaded file; missing ones are skipped.
        out: the data set folder being built.

    Returns:
        The table of covid-cxr's columns, one row per image written.
    """
    rows = []
    for row in selected.itertuples():
        src = images.get(f"images/{row.imagename}")
        if src is None:
            continue
        rel = f"images/{row.label}/{Path(row.imagename).stem}.png"
        width, height = convert_image(src, out / rel)
        rows.append([rel, row.label, row.patient_id, SOURCE, row.view, row.imagename, width, height])
    return pd.DataFrame(rows, columns=COVID_COLUMNS)


def fetch_external_actualmed(
    out: Path, downloads: Path, work: Path, force: bool, fetch: Fetch = download
) -> None:
    """Download the Actualmed metadata and the selected images, then build external-actualmed/."""
    staging = prepare(out, "external-actualmed", force)
    if staging is None:
        return
    metadata_urls = raw_urls(ACTUALMED_REPO, "metadata.csv")
    csv = download_first(metadata_urls, downloads / "actualmed-metadata.csv", fetch)
    table = read_table(csv, {"patientid", "finding", "view", "imagename"}, "Actualmed")
    selected = select_images(table)
    images = download_repo_files(
        ACTUALMED_REPO, [f"images/{name}" for name in selected["imagename"]], downloads / "actualmed", fetch
    )
    table = build_external_actualmed(selected, images, staging)
    counts = {label: int((table["label"] == label).sum()) for label in ("covid", "normal")}
    check_counts("external-actualmed", {**counts, "patients": table["patient_id"].nunique()}, EXPECTED)
    finish(staging, out / "external-actualmed", table)
    print(f"external-actualmed: {len(table)} images -> {out / 'external-actualmed'}")
