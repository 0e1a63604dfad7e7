"""Matplotlib set-up for files (no display) and the contact sheet of images with lung contours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend, so figures work on servers without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlay_grid(
    images: Sequence[np.ndarray],
    predicted: Sequence[np.ndarray],
    truth: Sequence[np.ndarray] | None,
    path: str | Path,
    titles: Sequence[str] | None = None,
    columns: int = 6,
) -> None:
    """A contact sheet: each image with the predicted (red) and, if given, true (green) lung contours.

    Args:
        images: uint8 grayscale images (H, W).
        predicted: 0/1 predicted masks, one per image.
        truth: 0/1 hand-drawn masks, one per image; None draws none.
        path: the PNG file written.
        titles: a short title per image; None: untitled.
        columns: images per row.
    """
    plt = pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:n]):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        if truth is not None and truth[i].any():
            ax.contour(truth[i], levels=[0.5], colors="lime", linewidths=0.8)
        if predicted[i].any():
            ax.contour(predicted[i], levels=[0.5], colors="red", linewidths=0.8)
        if titles:
            ax.set_title(titles[i], fontsize=7)
    legend = "red: predicted" + ("   green: hand-drawn" if truth is not None else "")
    fig.suptitle(legend, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
