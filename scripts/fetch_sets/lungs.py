"""lungs/: normal chest X-rays with hand-drawn lung masks from github pi-null-mezon/OpenIST."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fetch_sets.common import (
    Fetch,
    archive_urls,
    check_counts,
    download,
    download_first,
    extract_subfolder,
    finish,
    prepare,
    warn,
)
from fetch_sets.convert import convert_image, convert_mask, list_images, target_size, warn_if_odd_mask

OPENIST_REPO = "pi-null-mezon/OpenIST"
OPENIST_FOLDER = "Chest_x-ray"  # Datasets/Chest_x-ray in the repository
EXPECTED = {"pairs": 200}
COPY_SUFFIX = re.compile(r"\s*\(\d+\)$")  # "name (31)" -> "name": duplicate copies in OpenIST


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
        warn_if_odd_mask(mask_src.name, convert_mask(mask_src, out / mask_rel, target_size(*original)))
        rows.append([image_rel, mask_rel])
    return pd.DataFrame(rows, columns=["image", "mask"])


def fetch_lungs(out: Path, downloads: Path, work: Path, force: bool, fetch: Fetch = download) -> None:
    """Download the OpenIST archive and build lungs/."""
    staging = prepare(out, "lungs", force)
    if staging is None:
        return
    archive = download_first(archive_urls(OPENIST_REPO), downloads / "openist.zip", fetch)
    folder = extract_subfolder(archive, OPENIST_FOLDER, work / "openist")
    table = build_lungs(folder, staging)
    check_counts("lungs", {"pairs": len(table)}, EXPECTED)
    finish(staging, out / "lungs", table)
    print(f"lungs: {len(table)} image/mask pairs -> {out / 'lungs'}")
