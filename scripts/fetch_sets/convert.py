"""Image and mask conversion: 8-bit grayscale PNG, longer side at most 512 px; masks 0/255 of their image's
converted size."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from fetch_sets.common import warn

MAX_SIDE = 512
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def image_size(src: Path) -> tuple[int, int]:
    """Width and height of an image file (read from its header, the pixels are not decoded)."""
    with Image.open(src) as image:
        return image.size


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


def convert_mask(src: Path, dest: Path, size: tuple[int, int], smooth: bool = False) -> float:
    """Write a 0/255 mask of exactly ``size`` (the converted image's size); return the lung fraction.

    Any non-background pixel counts as lung: the threshold is half of the brightest value, so
    0/1, 0/255 and anti-aliased drawings all binarize the same way.

    Args:
        src: the mask as drawn, any size and mode.
        dest: the PNG to write.
        size: the converted image's size.
        smooth: resize the drawing bilinearly, then threshold (how the reference copy of lungs-covid was
            made: its V7 Labs masks have 127-valued edge pixels that count as background); otherwise
            threshold, then resize nearest (lungs/).

    Returns:
        The fraction of the mask's pixels that are lung.
    """
    with Image.open(src) as image:
        gray = to_gray8(image)
    _, high = gray.getextrema()
    threshold = max(high, 1) / 2
    if smooth and gray.size != size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    binary = gray.point(lambda v: 255 if v > threshold else 0).convert("L")
    if binary.size != size:
        binary = binary.resize(size, Image.Resampling.NEAREST)
    dest.parent.mkdir(parents=True, exist_ok=True)
    binary.save(dest, format="PNG")
    histogram = binary.histogram()
    return histogram[255] / max(1, sum(histogram))


def warn_if_odd_mask(name: str, fraction: float) -> None:
    """Warn about a mask that is likely empty or inverted (lungs cover a few percent to most of an X-ray)."""
    if not 0.02 < fraction < 0.8:
        warn(f"mask {name} covers {fraction:.0%} of the image: check that it is not empty or inverted.")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted, without hidden files (.DS_Store and the like)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS
    )
