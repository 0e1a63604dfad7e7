#!/usr/bin/env python
"""Download and rebuild the public chest X-ray data sets that covidseg uses.

Standalone on purpose (standard library + pandas + pillow, no ``covidseg`` import): it has to run
on a fresh, connected machine before the project is installed there, and the layout it writes is
the contract that ``covidseg`` reads (see the data README). The work is done by the modules of
``scripts/fetch_sets/`` (one per data set), found beside this file.

``<out>/covid-cxr/``
    The DarkCovidNet selection (github muhammedtalo/COVID-19, folder ``X-Ray Image DataSet`` with
    ``Covid-19`` / ``No_findings`` / ``Pneumonia``), as ``images/<label>/<stem>.png`` plus
    ``metadata.csv`` (path, label, patient_id, source, view, original_name, original_width,
    original_height). COVID patients come from ieee8023/covid-chestxray-dataset ``metadata.csv``,
    NIH patients from the file name (``00000013_005.png`` -> ``nih-00000013``).
``<out>/lungs/``
    Lung masks from github pi-null-mezon/OpenIST, folder ``Datasets/Chest_x-ray``, where each
    mask ``<name>@.png`` labels the image ``<name>.jpg``; written as ``images/<name>.png``,
    ``masks/<name>.png`` (0/255, same size as the image) and ``metadata.csv`` (image, mask).
``<out>/lungs-covid/``
    Frontal (PA, AP, AP Supine) COVID-19 images of ieee8023/covid-chestxray-dataset (its ``metadata.csv``
    and original image files) that have a V7 Labs lung mask in torchxrayvision 1.5.7
    (``torchxrayvision/data/semantic_masks_v7labs_lungs.zip`` inside the wheel, found through PyPI's JSON
    API), leaving out the patients of covid-cxr/ (so build that first); same layout as lungs/, and
    ``metadata.csv`` also has patient_id (``ieee-<id>``), finding, view, source and original_name. A mask
    whose size differs from its image's is skipped.
``<out>/external-actualmed/``
    The reference copy's 44 images (listed in ``fetch_sets/actualmed.py``) of github
    agchung/Actualmed-COVID-chestxray-dataset (``metadata.csv`` + ``images/``): COVID-19 -> covid,
    "No finding" -> normal, in covid-cxr's layout and columns (patient_id ``actualmed-<patientid>``,
    source "Actualmed (agchung)").

Every image is converted once to 8-bit grayscale PNG with the longer side at most 512 px (Lanczos).
A set whose counts differ from the reference copy's is reported (upstream repositories change).

Usage::

    python scripts/fetch_data.py --out DIR [--only SET [SET ...]] [--keep-downloads DIR] [--force]

SET is covid-cxr, lungs, lungs-covid or external-actualmed; all four by default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The modules beside this file, also when it is loaded by path (tests) rather than run.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fetch_sets.actualmed import build_external_actualmed, fetch_external_actualmed, select_images
from fetch_sets.common import (
    Fetch,
    FetchError,
    archive_urls,
    download,
    download_first,
)
from fetch_sets.convert import convert_mask, target_size, to_gray8
from fetch_sets.covid_cxr import (
    COVID_COLUMNS,
    build_covid_cxr,
    covid_patient,
    fetch_covid_cxr,
    nih_patient,
    read_ieee_metadata,
)
from fetch_sets.lungs import build_lungs, fetch_lungs
from fetch_sets.lungs_covid import build_lungs_covid, fetch_lungs_covid, select_pairs

# The script's API (what the tests call), re-exported from fetch_sets.
__all__ = [
    "COVID_COLUMNS",
    "FETCHERS",
    "FetchError",
    "archive_urls",
    "build_covid_cxr",
    "build_external_actualmed",
    "build_lungs",
    "build_lungs_covid",
    "convert_mask",
    "covid_patient",
    "download_first",
    "main",
    "nih_patient",
    "read_ieee_metadata",
    "select_images",
    "select_pairs",
    "target_size",
    "to_gray8",
]

# In build order: lungs-covid leaves out covid-cxr's patients, so covid-cxr comes first.
FETCHERS = {
    "covid-cxr": fetch_covid_cxr,
    "lungs": fetch_lungs,
    "lungs-covid": fetch_lungs_covid,
    "external-actualmed": fetch_external_actualmed,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description="Download and rebuild the public data sets for covidseg.")
    parser.add_argument("--out", type=Path, required=True, help="folder that receives the data set folders")
    parser.add_argument(
        "--only", nargs="+", choices=list(FETCHERS), metavar="SET", help="build only: " + ", ".join(FETCHERS)
    )
    parser.add_argument(
        "--keep-downloads",
        type=Path,
        metavar="DIR",
        help="keep the downloaded archives here (and reuse any already there)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild a data set even if its metadata.csv exists"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, fetch: Fetch = download) -> int:
    """Build the requested data sets; downloads go to a temporary folder unless --keep-downloads."""
    args = parse_args(argv)
    names = [name for name in FETCHERS if not args.only or name in args.only]  # in build order
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="covidseg-fetch-") as tmp:
            work = Path(tmp)
            downloads = args.keep_downloads or work / "downloads"
            for name in names:
                FETCHERS[name](args.out, downloads, work / name, args.force, fetch)
    except FetchError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
