#!/usr/bin/env python
"""Download and rebuild the two public chest X-ray data sets that covidseg uses.

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

Every image is converted once to 8-bit grayscale PNG with the longer side at most 512 px (Lanczos).

Usage::

    python scripts/fetch_data.py --out DIR [--only covid-cxr|lungs] [--keep-downloads DIR] [--force]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The modules beside this file, also when it is loaded by path (tests) rather than run.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fetch_sets.common import (
    Fetch,
    FetchError,
    archive_urls,
    download,
    download_first,
)
from fetch_sets.convert import target_size, to_gray8
from fetch_sets.covid_cxr import (
    COVID_COLUMNS,
    build_covid_cxr,
    covid_patient,
    fetch_covid_cxr,
    nih_patient,
    read_ieee_metadata,
)
from fetch_sets.lungs import build_lungs, fetch_lungs

# The script's API (what the tests call), re-exported from fetch_sets.
__all__ = [
    "COVID_COLUMNS",
    "FETCHERS",
    "FetchError",
    "archive_urls",
    "build_covid_cxr",
    "build_lungs",
    "covid_patient",
    "download_first",
    "main",
    "nih_patient",
    "read_ieee_metadata",
    "target_size",
    "to_gray8",
]

FETCHERS = {"covid-cxr": fetch_covid_cxr, "lungs": fetch_lungs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description="Download and rebuild covid-cxr/ and lungs/ for covidseg.")
    parser.add_argument("--out", type=Path, required=True, help="folder that receives covid-cxr/ and lungs/")
    parser.add_argument("--only", choices=sorted(FETCHERS), help="build one data set only")
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
    names = [args.only] if args.only else list(FETCHERS)
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
