"""lungs-covid/: frontal COVID-19 chest X-rays of the ieee8023 collection with the V7 Labs lung masks that
torchxrayvision 1.5.7 ships (``torchxrayvision/data/semantic_masks_v7labs_lungs.zip``, one mask per image,
named like the image), leaving out the patients of covid-cxr/."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd

from fetch_sets.common import (
    Fetch,
    FetchError,
    check_counts,
    download,
    download_first,
    download_repo_files,
    extract_subfolder,
    finish,
    prepare,
    read_table,
    warn,
)
from fetch_sets.convert import convert_image, convert_mask, image_size, target_size, warn_if_odd_mask
from fetch_sets.covid_cxr import (
    IEEE_METADATA_FILE,
    IEEE_METADATA_URLS,
    IEEE_REPO,
    IEEE_SOURCE,
    read_ieee_table,
)

TXV_VERSION = "1.5.7"
TXV_WHEEL = f"torchxrayvision-{TXV_VERSION}-py3-none-any.whl"
TXV_JSON_URL = f"https://pypi.org/pypi/torchxrayvision/{TXV_VERSION}/json"
MASKS_MEMBER = "torchxrayvision/data/semantic_masks_v7labs_lungs.zip"
MASKS_FOLDER = "semantic_masks_v7labs_lungs"
# ieee8023 view (compared case-insensitively) -> how lungs-covid writes it; other views are not frontal.
FRONTAL_VIEWS = {"pa": "PA", "ap": "AP", "ap supine": "AP Supine"}
COLUMNS = ["image", "mask", "patient_id", "finding", "view", "source", "original_name"]
EXPECTED = {"pairs": 222, "patients": 136}


def wheel_url(pypi_json: Path) -> str:
    """The download URL of the torchxrayvision wheel in PyPI's JSON description of the release."""
    try:
        files = json.loads(pypi_json.read_text())["urls"]
    except (ValueError, KeyError, TypeError) as err:
        raise FetchError(f"{pypi_json} is not PyPI's JSON description of a release ({err}).") from err
    for entry in files:
        if entry.get("filename") == TXV_WHEEL:
            return entry["url"]
    raise FetchError(
        f"PyPI lists no {TXV_WHEEL} ({pypi_json}). Run `pip download torchxrayvision=={TXV_VERSION} "
        "--no-deps -d FOLDER` and pass --keep-downloads FOLDER."
    )


def extract_masks(downloads: Path, work: Path, fetch: Fetch) -> Path:
    """The folder of V7 Labs lung masks, taken from the torchxrayvision wheel (downloaded unless a copy is
    already in the downloads folder, e.g. from ``pip download``)."""
    wheel = downloads / TXV_WHEEL
    if not wheel.is_file():
        pypi_json = download_first([TXV_JSON_URL], downloads / f"torchxrayvision-{TXV_VERSION}.json", fetch)
        download_first([wheel_url(pypi_json)], wheel, fetch)
    inner = work / "semantic_masks_v7labs_lungs.zip"
    inner.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as whl:
            inner.write_bytes(whl.read(MASKS_MEMBER))
    except (zipfile.BadZipFile, KeyError) as err:
        raise FetchError(f"{wheel} has no readable {MASKS_MEMBER} ({err}); delete it and run again.") from err
    return extract_subfolder(inner, MASKS_FOLDER, work / "v7-masks")


def covid_cxr_patients(out: Path) -> set[str]:
    """Patient ids of covid-cxr/, which lungs-covid leaves out so that a segmenter trained on it has not
    seen the classifier's images."""
    csv = out / "covid-cxr" / "metadata.csv"
    if not csv.is_file():
        raise FetchError(
            f"lungs-covid leaves out the patients of covid-cxr/, and {csv} does not exist: build covid-cxr "
            "first (run without --only, or with --only covid-cxr)."
        )
    return set(read_table(csv, {"patient_id"}, "covid-cxr")["patient_id"])


def is_covid(finding: str) -> bool:
    """True for 'COVID-19', 'Pneumonia/Viral/COVID-19' (newer metadata) and 'COVID-19, ARDS' (older)."""
    parts = finding.replace(",", "/").split("/")
    return any(part.strip().upper() == "COVID-19" for part in parts)


def select_pairs(table: pd.DataFrame, masks: set[str], exclude: set[str]) -> pd.DataFrame:
    """Rows of the ieee8023 metadata that make lungs-covid, in the metadata's order.

    Args:
        table: the metadata (``read_ieee_table``).
        masks: file names that have a V7 Labs mask.
        exclude: patient ids (``ieee-<id>``) to leave out.

    Returns:
        ``path`` (in the repository), ``filename``, ``patient_id``, ``finding`` (without the
        'Pneumonia/Viral/' hierarchy) and ``view`` of frontal COVID-19 images with a mask, each file once.
    """
    rows, seen = [], set()
    folders = table["folder"] if "folder" in table else ["images"] * len(table)
    for name, patient, finding, view, folder in zip(
        table["filename"], table["patientid"], table["finding"], table["view"], folders
    ):
        frontal = FRONTAL_VIEWS.get(view.lower())
        patient_id = f"ieee-{patient}"
        if name in seen or name not in masks or not frontal or not is_covid(finding) or patient_id in exclude:
            continue
        seen.add(name)
        rows.append([f"{folder or 'images'}/{name}", name, patient_id, finding.split("/")[-1], frontal])
    return pd.DataFrame(rows, columns=["path", "filename", "patient_id", "finding", "view"])


def build_lungs_covid(pairs: pd.DataFrame, images: dict[str, Path], masks: Path, out: Path) -> pd.DataFrame:
    """Convert the selected images and their masks; return the metadata table (not saved).

    Args:
        pairs: ``select_pairs``' table.
        images: repository path -> downloaded image file (missing ones were warned about and are skipped).
        masks: the folder of V7 Labs masks, named like the images.
        out: the data set folder being built.

    Returns:
        The table of ``COLUMNS``, one row per image/mask pair written.
    """
    rows, seen = [], set()
    for pair in pairs.itertuples():
        src = images.get(pair.path)
        if src is None:
            continue
        stem = Path(pair.filename).stem
        size, mask_size = image_size(src), image_size(masks / pair.filename)
        if stem in seen:  # x.jpg and x.png would both become x.png
            warn(f"{pair.filename}: another image has the stem {stem!r}; skipped.")
            continue
        if mask_size != size:
            warn(f"the mask of {pair.filename} is {mask_size}, its image {size}: skipped (masks must match).")
            continue
        seen.add(stem)
        image_rel, mask_rel = f"images/{stem}.png", f"masks/{stem}.png"
        convert_image(src, out / image_rel)
        fraction = convert_mask(masks / pair.filename, out / mask_rel, target_size(*size), smooth=True)
        warn_if_odd_mask(pair.filename, fraction)
        row = [image_rel, mask_rel, pair.patient_id, pair.finding, pair.view, IEEE_SOURCE, pair.filename]
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def fetch_lungs_covid(out: Path, downloads: Path, work: Path, force: bool, fetch: Fetch = download) -> None:
    """Download the ieee8023 metadata, the torchxrayvision wheel and the chosen images; build lungs-covid/."""
    staging = prepare(out, "lungs-covid", force)
    if staging is None:
        return
    exclude = covid_cxr_patients(out)
    ieee_csv = download_first(IEEE_METADATA_URLS, downloads / IEEE_METADATA_FILE, fetch)
    masks = extract_masks(downloads, work, fetch)
    names = {p.name for p in masks.iterdir() if p.is_file()}
    pairs = select_pairs(read_ieee_table(ieee_csv, {"finding", "view"}), names, exclude)
    print(f"lungs-covid: {len(pairs)} frontal COVID-19 images with a mask; downloading them")
    images = download_repo_files(IEEE_REPO, pairs["path"], downloads / "ieee8023", fetch)
    table = build_lungs_covid(pairs, images, masks, staging)
    check_counts("lungs-covid", {"pairs": len(table), "patients": table["patient_id"].nunique()}, EXPECTED)
    finish(staging, out / "lungs-covid", table)
    print(f"lungs-covid: {len(table)} image/mask pairs -> {out / 'lungs-covid'}")
