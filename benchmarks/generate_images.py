"""Generate a chest-X-ray-like data set in covidseg's format, for benchmarks at any scale.

    python -m benchmarks.generate_images --n 3000 --size 1024 --out /tmp/covidseg-bench/gen-3000-1024

Writes OUT/images/<label>/<index>.png (8-bit grayscale, SIZE x SIZE) and OUT/metadata.csv with the
columns of the real covid-cxr set (path,label,patient_id,source,view). Each image is a smooth torso with
two darker lung fields, a spine and ribs, plus mild noise, so PNGs compress to sizes like real radiographs'
(pure noise would not compress at all, flat images almost completely). "covid" images get bright patchy
opacities in the lungs. Several images per patient, half the patients of each class.

Deterministic: image i depends only on (--seed, i, --size). Idempotent: files already there are kept
(written under a temporary name and renamed, so an interrupted run leaves no half-written PNG), and
metadata.csv is rewritten with the same content. Decodes in parallel on all cores (--workers).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

CLASSES = ("normal", "covid")
SOURCE = "generated (benchmarks/generate_images.py)"


def manifest(n: int, seed: int, per_patient: int = 3) -> pd.DataFrame:
    """Rows of the data set: image i belongs to patient i // per_patient; patients alternate classes."""
    rng = np.random.default_rng([seed, 1])
    patients = np.arange(n) // per_patient
    labels = np.where(patients % 2 == 1, CLASSES[1], CLASSES[0])
    views = rng.choice(["PA", "AP"], size=n, p=[0.7, 0.3])
    return pd.DataFrame(
        {
            "path": [f"images/{label}/{i:06d}.png" for i, label in enumerate(labels)],
            "label": labels,
            "patient_id": [f"gen-{p:06d}" for p in patients],
            "source": SOURCE,
            "view": views,
        }
    )


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Soft-edged ellipse in [0, 1] on a grid of coordinates in [0, 1]."""
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return np.clip((1.0 - d) * 4.0, 0.0, 1.0)


def render(index: int, size: int, seed: int, covid: bool) -> np.ndarray:
    """One SIZE x SIZE uint8 image, a function of (seed, index, size, covid) only."""
    rng = np.random.default_rng([seed, index])
    # The smooth anatomy is drawn at most 512 px wide and enlarged (it has no finer detail); the noise is
    # added at full size, so larger images cost bytes on disk like real scans do.
    base = min(size, 512)
    axis = np.linspace(0.0, 1.0, base, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    jitter = rng.uniform(-0.03, 0.03, size=8).astype(np.float32)
    body = _ellipse(yy, xx, 0.55 + jitter[0], 0.5 + jitter[1], 0.55, 0.42 + jitter[2])
    lungs = _ellipse(yy, xx, 0.45 + jitter[3], 0.32 + jitter[4], 0.28, 0.13) + _ellipse(
        yy, xx, 0.45 + jitter[3], 0.68 + jitter[5], 0.28, 0.13
    )
    spine = np.exp(-(((xx - 0.5 - jitter[6]) / 0.035) ** 2)) * (yy > 0.15)
    ribs = 0.5 + 0.5 * np.sin(yy * rng.uniform(55, 70) + np.abs(xx - 0.5) * 8.0)
    image = 0.08 + 0.55 * body - 0.30 * lungs * (1.0 - 0.35 * ribs) + 0.25 * spine
    if covid:  # patchy opacities inside the lungs
        for _ in range(int(rng.integers(2, 6))):
            cy, cx = rng.uniform(0.3, 0.65), rng.choice([0.32, 0.68]) + rng.uniform(-0.07, 0.07)
            image += 0.18 * _ellipse(yy, xx, cy, cx, rng.uniform(0.04, 0.1), rng.uniform(0.03, 0.08)) * lungs
    smooth = Image.fromarray(np.clip(image * 255.0, 0, 255).astype(np.uint8))
    smooth = smooth.filter(ImageFilter.GaussianBlur(radius=base / 256))
    if base != size:
        smooth = smooth.resize((size, size), Image.Resampling.BILINEAR)
    noise = rng.standard_normal((size, size), dtype=np.float32) * 2.5
    return np.clip(np.asarray(smooth, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def _write(job: tuple[Path, int, int, int, bool]) -> bool:
    target, index, size, seed, covid = job
    if target.is_file():
        return False
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # Level 1: a fast write, and about the size (0.5-0.6 bytes per pixel) of real radiograph PNGs.
    Image.fromarray(render(index, size, seed, covid)).save(partial, format="PNG", compress_level=1)
    partial.replace(target)
    return True


def generate(out: str | Path, n: int, size: int, seed: int = 0, workers: int | None = None) -> Path:
    """Make (or complete) the data set in `out`; returns `out`. Existing images are not rewritten."""
    out = Path(out)
    table = manifest(n, seed)
    for label in CLASSES:
        (out / "images" / label).mkdir(parents=True, exist_ok=True)
    jobs = [
        (out / row.path, i, size, seed, row.label == CLASSES[1])
        for i, row in enumerate(table.itertuples(index=False))
    ]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        written = sum(map(_write, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            written = sum(pool.map(_write, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    table.to_csv(out / "metadata.csv", index=False)
    print(f"{out}: {n} images of {size}x{size} px ({written} written, {n - written} already there)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=1024, help="side of the square images in pixels")
    parser.add_argument("--out", required=True, help="data set folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args()
    if args.n < 12 or args.size < 32:
        parser.error("--n must be at least 12 (patients of both classes in every split), --size at least 32")
    generate(args.out, args.n, args.size, args.seed, args.workers)


if __name__ == "__main__":
    main()
