#!/usr/bin/env python
"""Download and rebuild the two public chest X-ray data sets that covidseg uses.

Standalone on purpose (standard library + pandas + pillow, no ``covidseg`` import): it has to run
on a fresh, connected machine before the project is installed there, and the layout it writes is
the contract that ``covidseg`` reads (see the data README):

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
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from PIL import Image

MAX_SIDE = 512
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
USER_AGENT = "covidseg-fetch-data/1.0 (+https://github.com)"
TIMEOUT_S = 60

DARKCOVIDNET_REPO = "muhammedtalo/COVID-19"
DARKCOVIDNET_FOLDER = "X-Ray Image DataSet"
OPENIST_REPO = "pi-null-mezon/OpenIST"
OPENIST_FOLDER = "Chest_x-ray"  # Datasets/Chest_x-ray in the repository
IEEE_METADATA_URLS = [
    f"https://raw.githubusercontent.com/ieee8023/covid-chestxray-dataset/{branch}/metadata.csv"
    for branch in ("master", "main")
]
BRANCHES = ("master", "main")

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
EXPECTED_COUNTS = {"covid-cxr": {"covid": 124, "normal": 500, "pneumonia": 500}, "lungs": {"pairs": 200}}
NIH_NAME = re.compile(r"^(\d{8})_\d{3}$")
COPY_SUFFIX = re.compile(r"\s*\(\d+\)$")  # "name (31)" -> "name": duplicate copies in OpenIST


class FetchError(RuntimeError):
    """A failure the user can act on; main() prints it without a traceback."""


def warn(message: str) -> None:
    """Print a warning to stderr so that it stands out from the progress lines."""
    print(f"WARNING: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Downloads
# ----------------------------------------------------------------------------------------------


def archive_urls(repo: str) -> list[str]:
    """GitHub zip URLs of a repository's default branch candidates (master first, then main)."""
    return [f"https://github.com/{repo}/archive/refs/heads/{branch}.zip" for branch in BRANCHES]


def download(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` (via a .part file, so an interrupted run leaves no bad file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    print(f"Downloading {url}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except urllib.error.HTTPError:
        part.unlink(missing_ok=True)
        raise  # callers decide whether a 404 means "try the next branch"
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise FetchError(
            f"Could not download {url} ({reason}).\n"
            "Check the network connection (and HTTPS_PROXY if you are behind a proxy), then run again. "
            f"Or download that URL by hand, save it as {dest.name} in a folder and pass "
            "--keep-downloads FOLDER, which reuses files already there."
        ) from err
    part.replace(dest)
    return dest


def download_first(urls: Iterable[str], dest: Path, fetch: Callable[[str, Path], Path] = download) -> Path:
    """Fetch the first URL that exists: a branch named master or main, whichever the repo has."""
    if dest.is_file():
        print(f"Reusing {dest}")
        return dest
    tried = []
    for url in urls:
        try:
            return fetch(url, dest)
        except urllib.error.HTTPError as err:
            tried.append(f"{url} (HTTP {err.code})")
            if err.code != 404:
                break
    raise FetchError(
        "Could not download any of: " + ", ".join(tried) + ".\n"
        "The repository may have moved or be rate-limited; open the URL in a browser, save the file as "
        f"{dest.name} in a folder and pass --keep-downloads FOLDER."
    )


def extract_subfolder(archive: Path, folder_name: str, dest: Path) -> Path:
    """Extract only the members under a folder called ``folder_name`` (the archives also hold
    notebooks and other data we do not need), and return the extracted folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if f"/{folder_name}/" in f"/{m}"]
            if not members:
                raise FetchError(f"{archive} has no folder {folder_name!r}: the repository layout changed.")
            for member in members:
                zf.extract(member, dest)  # zipfile strips absolute paths and '..' itself
    except zipfile.BadZipFile as err:
        raise FetchError(f"{archive} is not a valid zip file ({err}); delete it and run again.") from err
    return find_folder(dest, folder_name)


def find_folder(root: Path, name: str) -> Path:
    """The shallowest folder called ``name`` below ``root`` (archives add a '<repo>-<branch>/' top)."""
    hits = sorted((p for p in root.rglob(name) if p.is_dir()), key=lambda p: len(p.parts))
    if not hits:
        raise FetchError(f"No folder {name!r} under {root}.")
    return hits[0]


# ----------------------------------------------------------------------------------------------
# Image conversion
# ----------------------------------------------------------------------------------------------


def target_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Size with the longer side at most ``max_side``, aspect kept; small images stay as they are."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_gray8(image: Image.Image) -> Image.Image:
    """8-bit grayscale: 16-bit scans are rescaled (not clipped) and transparency goes to black."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = image.convert("I")
        _, high = image.getextrema()
        scale = 255.0 / high if high > 255 else 1.0
        return image.point(lambda v: v * scale).convert("L")
    if image.mode == "F":
        low, high = image.getextrema()
        span = (high - low) or 1.0
        return image.point(lambda v: (v - low) * 255.0 / span).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("L")


def convert_image(src: Path, dest: Path) -> tuple[int, int]:
    """Write ``src`` as 8-bit grayscale PNG, longer side <= 512 px (Lanczos); return the original size."""
    with Image.open(src) as image:
        image.seek(0)  # first frame of a GIF/TIFF
        original = image.size
        gray = to_gray8(image)
    size = target_size(*original)
    if size != original:
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    gray.save(dest, format="PNG")
    return original


def convert_mask(src: Path, dest: Path, size: tuple[int, int]) -> float:
    """Write a 0/255 mask of exactly ``size`` (the converted image's size); return the lung fraction.

    Any non-background pixel counts as lung: the threshold is half of the brightest value, so
    0/1, 0/255 and anti-aliased drawings all binarize the same way."""
    with Image.open(src) as image:
        gray = to_gray8(image)
    _, high = gray.getextrema()
    threshold = max(high, 1) / 2
    binary = gray.point(lambda v: 255 if v > threshold else 0).convert("L")
    if binary.size != size:
        binary = binary.resize(size, Image.Resampling.NEAREST)
    dest.parent.mkdir(parents=True, exist_ok=True)
    binary.save(dest, format="PNG")
    histogram = binary.histogram()
    return histogram[255] / max(1, sum(histogram))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted, without hidden files (.DS_Store and the like)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS
    )


# ----------------------------------------------------------------------------------------------
# covid-cxr
# ----------------------------------------------------------------------------------------------


class IeeeInfo(NamedTuple):
    """What the ieee8023 metadata tells about one COVID image."""

    patient_id: str
    view: str


def read_ieee_metadata(csv_path: Path) -> dict[str, IeeeInfo]:
    """Map file name -> patient and view; the first row wins when a file is listed twice.

    Column names are normalized (older versions spell ``Patientid`` and pad some names with
    spaces), and keys are also stored lower-cased for a case-insensitive fallback."""
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    table.columns = [c.strip().lower() for c in table.columns]
    missing = {"filename", "patientid", "view"} - set(table.columns)
    if missing:
        raise FetchError(
            f"{csv_path} lacks the columns {sorted(missing)}: the ieee8023 metadata format changed."
        )
    lookup: dict[str, IeeeInfo] = {}
    for filename, patient, view in zip(table["filename"], table["patientid"], table["view"]):
        name, info = filename.strip(), IeeeInfo(patient.strip(), view.strip())
        if name and info.patient_id:
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


# ----------------------------------------------------------------------------------------------
# lungs
# ----------------------------------------------------------------------------------------------


def pair_masks(folder: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for every mask ``<name>@.png`` that has an image ``<name>.<ext>``.

    OpenIST keeps images and masks side by side; a mask's name is its image's name plus '@'.
    Images without a mask are not part of the segmentation set; a mask without its image is
    reported. An image saved as a numbered copy ("<name> (31).jpg") is accepted as a fallback."""
    files = list_images(folder)
    images: dict[str, Path] = {}
    for path in files:
        if not path.stem.endswith("@"):
            images.setdefault(path.stem, path)
    for stem, path in list(images.items()):
        images.setdefault(COPY_SUFFIX.sub("", stem), path)
    pairs = []
    for mask in files:
        if not mask.stem.endswith("@"):
            continue
        name = mask.stem[:-1].strip()
        image = images.get(name)
        if image is None:
            warn(f"mask {mask.name} has no image {name}.jpg; skipped.")
            continue
        pairs.append((name, image, mask))
    return sorted(pairs)


def build_lungs(folder: Path, out: Path) -> pd.DataFrame:
    """Convert image/mask pairs and return the metadata table (not saved)."""
    rows = []
    for name, image_src, mask_src in pair_masks(folder):
        image_rel, mask_rel = f"images/{name}.png", f"masks/{name}.png"
        original = convert_image(image_src, out / image_rel)
        fraction = convert_mask(mask_src, out / mask_rel, target_size(*original))
        if not 0.02 < fraction < 0.8:
            warn(
                f"mask {mask_src.name} covers {fraction:.0%} of the image: check that it is not "
                "empty or inverted."
            )
        rows.append([image_rel, mask_rel])
    return pd.DataFrame(rows, columns=["image", "mask"])


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------


def check_counts(name: str, counts: dict[str, int]) -> None:
    """Say when the rebuilt set differs from the reference copy, since results would then differ too."""
    expected = EXPECTED_COUNTS[name]
    if counts != expected:
        warn(
            f"{name}: got {counts}, the reference copy has {expected}; the upstream repository may "
            "have changed."
        )


def finish(staging: Path, target: Path, table: pd.DataFrame) -> None:
    """Write metadata.csv last and swap the staging folder in, so that a half-built set never
    looks complete (a present metadata.csv is what makes later runs skip the set)."""
    table.to_csv(staging / "metadata.csv", index=False)
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)


def prepare(out: Path, name: str, force: bool) -> Path | None:
    """Staging folder for data set ``name``, or None when it is already built and not forced."""
    target = out / name
    if (target / "metadata.csv").is_file() and not force:
        print(f"{target} already has metadata.csv; skipped (use --force to rebuild).")
        return None
    if target.exists() and any(target.iterdir()) and not force:
        raise FetchError(
            f"{target} exists without metadata.csv (an interrupted run?); pass --force to replace it."
        )
    staging = out / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def fetch_covid_cxr(
    out: Path, downloads: Path, work: Path, force: bool, fetch: Callable[[str, Path], Path] = download
) -> None:
    """Download the DarkCovidNet archive and the ieee8023 metadata, then build covid-cxr/."""
    staging = prepare(out, "covid-cxr", force)
    if staging is None:
        return
    archive = download_first(archive_urls(DARKCOVIDNET_REPO), downloads / "darkcovidnet.zip", fetch)
    ieee_csv = download_first(IEEE_METADATA_URLS, downloads / "ieee8023-metadata.csv", fetch)
    dataset_dir = extract_subfolder(archive, DARKCOVIDNET_FOLDER, work / "darkcovidnet")
    table = build_covid_cxr(dataset_dir, read_ieee_metadata(ieee_csv), staging)
    check_counts("covid-cxr", {label: int((table["label"] == label).sum()) for label in LABELS})
    finish(staging, out / "covid-cxr", table)
    print(f"covid-cxr: {len(table)} images, {table['patient_id'].nunique()} patients -> {out / 'covid-cxr'}")


def fetch_lungs(
    out: Path, downloads: Path, work: Path, force: bool, fetch: Callable[[str, Path], Path] = download
) -> None:
    """Download the OpenIST archive and build lungs/."""
    staging = prepare(out, "lungs", force)
    if staging is None:
        return
    archive = download_first(archive_urls(OPENIST_REPO), downloads / "openist.zip", fetch)
    folder = extract_subfolder(archive, OPENIST_FOLDER, work / "openist")
    table = build_lungs(folder, staging)
    check_counts("lungs", {"pairs": len(table)})
    finish(staging, out / "lungs", table)
    print(f"lungs: {len(table)} image/mask pairs -> {out / 'lungs'}")


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


def main(argv: list[str] | None = None, fetch: Callable[[str, Path], Path] = download) -> int:
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
