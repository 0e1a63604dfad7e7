"""covid-cxr/: the DarkCovidNet selection (ieee8023 COVID-19 images + NIH ChestX-ray8), with the ieee8023
metadata for the COVID patients."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from fetch_sets.common import (
    Fetch,
    FetchError,
    archive_urls,
    check_counts,
    download,
    download_first,
    extract_subfolder,
    finish,
    prepare,
    raw_urls,
    read_table,
    warn,
)
from fetch_sets.convert import convert_image, list_images

DARKCOVIDNET_REPO = "muhammedtalo/COVID-19"
DARKCOVIDNET_FOLDER = "X-Ray Image DataSet"
IEEE_REPO = "ieee8023/covid-chestxray-dataset"
IEEE_METADATA_URLS = raw_urls(IEEE_REPO, "metadata.csv")
IEEE_METADATA_FILE = "ieee8023-metadata.csv"  # in the downloads folder; lungs-covid reads it too

# Class folder in the DarkCovidNet archive (compared case-insensitively) -> our label.
CLASS_FOLDERS = {"covid-19": "covid", "covid": "covid", "no_findings": "normal", "pneumonia": "pneumonia"}
LABELS = ("covid", "normal", "pneumonia")
IEEE_SOURCE = "ieee8023/covid-chestxray-dataset"
NIH_SOURCE = "NIH ChestX-ray8"
NIH_VIEW = "PA/AP"  # the DarkCovidNet NIH images are frontal without a recorded PA/AP split
COVID_COLUMNS = [
    "path",
    "label",
    "patient_id",
    "source",
    "view",
    "original_name",
    "original_width",
    "original_height",
]
# Counts of the reference copy; a different count is reported, not fatal (upstream may change).
EXPECTED = {"covid": 124, "normal": 500, "pneumonia": 500}
NIH_NAME = re.compile(r"^(\d{8})_\d{3}$")


class IeeeInfo(NamedTuple):
    """What the ieee8023 metadata tells about one COVID image."""

    patient_id: str
    view: str


def read_ieee_table(csv_path: Path, required: set[str]) -> pd.DataFrame:
    """The ieee8023 metadata, columns normalized (older versions spell ``Patientid`` and pad some names)."""
    return read_table(csv_path, {"filename", "patientid"} | required, "ieee8023")


def read_ieee_metadata(csv_path: Path) -> dict[str, IeeeInfo]:
    """Map file name -> patient and view; the first row wins when a file is listed twice.

    Keys are also stored lower-cased for a case-insensitive fallback."""
    table = read_ieee_table(csv_path, {"view"})
    lookup: dict[str, IeeeInfo] = {}
    for name, patient, view in zip(table["filename"], table["patientid"], table["view"]):
        if name and patient:
            info = IeeeInfo(patient, view)
            lookup.setdefault(name, info)
            lookup.setdefault(name.lower(), info)
    return lookup


def covid_patient(name: str, ieee: dict[str, IeeeInfo]) -> tuple[str, str]:
    """Patient id and view of a COVID image; unknown files get their own patient (with a warning)."""
    info = ieee.get(name) or ieee.get(name.lower())
    if info is None:
        stem = Path(name).stem
        warn(f"{name} is not in the ieee8023 metadata: patient id ieee-file-{stem}, view unknown.")
        return f"ieee-file-{stem}", ""
    return f"ieee-{info.patient_id}", info.view


def nih_patient(name: str) -> str:
    """NIH ChestX-ray8 names are <8-digit patient>_<3-digit follow-up>.png."""
    stem = Path(name).stem
    match = NIH_NAME.match(stem)
    if match is None:
        warn(f"{name} does not look like an NIH file name: patient id nih-file-{stem}.")
        return f"nih-file-{stem}"
    return f"nih-{match.group(1)}"


def class_folders(dataset_dir: Path) -> dict[str, Path]:
    """Label -> class folder of the extracted DarkCovidNet set (Covid-19, No_findings, Pneumonia)."""
    found: dict[str, Path] = {}
    for child in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        label = CLASS_FOLDERS.get(child.name.lower())
        if label is not None and label not in found:
            found[label] = child
    missing = [label for label in LABELS if label not in found]
    if missing:
        names = sorted(p.name for p in dataset_dir.iterdir())
        raise FetchError(f"{dataset_dir} lacks class folders for {missing} (found {names}).")
    return found


def build_covid_cxr(dataset_dir: Path, ieee: dict[str, IeeeInfo], out: Path) -> pd.DataFrame:
    """Convert every image of the DarkCovidNet selection and return the metadata table (not saved)."""
    rows = []
    for label, folder in class_folders(dataset_dir).items():
        seen: set[str] = set()
        sources = list_images(folder)
        print(f"Converting {len(sources)} {label} images from {folder.name}/")
        for src in sources:
            if src.stem in seen:  # e.g. x.jpg and x.png would both become x.png
                warn(f"{src.name}: another {label} image has the stem {src.stem!r}; skipped.")
                continue
            seen.add(src.stem)
            rel = f"images/{label}/{src.stem}.png"
            width, height = convert_image(src, out / rel)
            if label == "covid":
                patient, view, source = *covid_patient(src.name, ieee), IEEE_SOURCE
            else:
                patient, view, source = nih_patient(src.name), NIH_VIEW, NIH_SOURCE
            rows.append([rel, label, patient, source, view, src.name, width, height])
    table = pd.DataFrame(rows, columns=COVID_COLUMNS)
    return table.sort_values("path", ignore_index=True)


def fetch_covid_cxr(out: Path, downloads: Path, work: Path, force: bool, fetch: Fetch = download) -> None:
    """Download the DarkCovidNet archive and the ieee8023 metadata, then build covid-cxr/."""
    staging = prepare(out, "covid-cxr", force)
    if staging is None:
        return
    archive = download_first(archive_urls(DARKCOVIDNET_REPO), downloads / "darkcovidnet.zip", fetch)
    ieee_csv = download_first(IEEE_METADATA_URLS, downloads / IEEE_METADATA_FILE, fetch)
    dataset_dir = extract_subfolder(archive, DARKCOVIDNET_FOLDER, work / "darkcovidnet")
    table = build_covid_cxr(dataset_dir, read_ieee_metadata(ieee_csv), staging)
    check_counts("covid-cxr", {label: int((table["label"] == label).sum()) for label in LABELS}, EXPECTED)
    finish(staging, out / "covid-cxr", table)
    print(f"covid-cxr: {len(table)} images, {table['patient_id'].nunique()} patients -> {out / 'covid-cxr'}")
