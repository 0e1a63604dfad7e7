"""Matplotlib set-up for files (no display), the contact sheet of images with lung contours, and
covidseg-predict's Grad-CAM overlay of one image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

RESEARCH_USE = "Research use only \u2014 not for diagnosis."
PANEL_HEIGHT = 4.8  # inches of each image panel for a portrait or square image (a readable radiograph)
PANEL_WIDTH = (2.4, 7.2)  # inches: very wide or very tall images are kept between these
DPI = 120


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


def _panel_size(width: int, height: int) -> tuple[float, float]:
    """Inches of an image panel that keeps the image's width:height ratio at a readable size."""
    aspect = width / height
    panel_w = min(max(PANEL_HEIGHT * aspect, PANEL_WIDTH[0]), PANEL_WIDTH[1])
    return panel_w, panel_w / aspect


def save_cam_overlay(
    path: str | Path,
    image: np.ndarray,
    seen: np.ndarray,
    cam: np.ndarray,
    source_size: tuple[int, int],
    title: str,
    cam_label: str,
    lung_mask: np.ndarray | None = None,
    cam_box: tuple[int, int, int, int] | None = None,
    footer: str = RESEARCH_USE,
) -> None:
    """One image's PNG at the image's own width:height ratio: the image (with its lung contour) beside what
    the network saw under the Grad-CAM heat map, a colour bar, the title and a research-use line.

    The arrays are covidseg's square ones (the network's frame); they are drawn stretched back to
    `source_size`, so a 512 x 421 radiograph looks like one, whatever the network's input size.

    Args:
        path: the PNG file written.
        image: the uint8 image (H, W) as loaded, before any mask.
        seen: what the network saw of it in the same frame (masked for segmented input; `image` for raw).
        cam: the Grad-CAM map in [0, 1] (h, w); it covers `cam_box` of the frame.
        source_size: the image file's (width, height) in pixels, as displayed.
        title: the figure's title (the file, the probability of the positive class, the decision).
        cam_label: what the heat map explains (e.g. "Grad-CAM of covid"), on the panel and the colour bar.
        lung_mask: the image's 0/1 lung mask in the same frame (drawn as a red contour); None: none.
        cam_box: (top, bottom, left, right) of the frame the network's input was cropped to (crop_to_lungs,
            drawn dashed); None: the whole frame.
        footer: the line at the bottom.
    """
    plt = pyplot()
    from matplotlib.patches import Rectangle

    width, height = source_size
    rows, cols = image.shape
    sx, sy = width / cols, height / rows  # frame pixels -> source pixels
    top, bottom, left, right = cam_box or (0, rows, 0, cols)
    panel_w, panel_h = _panel_size(width, height)
    head, foot, side, gap, bar = 0.75, 0.45, 0.15, 0.15, 0.9  # inches around the panels
    fig_w, fig_h = side + 2 * panel_w + gap + bar, head + panel_h + foot
    fig = plt.figure(figsize=(fig_w, fig_h))
    frame = (0, width, height, 0)  # extent: the whole frame in source pixels
    axes = []
    for i in range(2):
        x0 = (side + i * (panel_w + gap)) / fig_w
        ax = fig.add_axes((x0, foot / fig_h, panel_w / fig_w, panel_h / fig_h))
        ax.imshow(image if i == 0 else seen, cmap="gray", vmin=0, vmax=255, extent=frame, aspect="auto")
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis("off")
        axes.append(ax)
    if lung_mask is not None and lung_mask.any():
        # pixel centres in source pixels: row 0 at the top, as the image is drawn
        xs, ys = (np.arange(cols) + 0.5) * sx, (np.arange(rows) + 0.5) * sy
        for ax in axes:
            ax.contour(xs, ys, lung_mask, levels=[0.5], colors="red", linewidths=0.8)
    box = (left * sx, right * sx, bottom * sy, top * sy)
    heat = axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=box, aspect="auto")
    if cam_box is not None:
        axes[1].add_patch(
            Rectangle(
                (box[0], box[3]),
                box[1] - box[0],
                box[2] - box[3],
                fill=False,
                edgecolor="white",
                linestyle="--",
                linewidth=0.8,
            )
        )
    axes[0].set_title("image" + (", lung mask (red)" if lung_mask is not None else ""), fontsize=8)
    crop = " (its crop: dashed)" if cam_box else ""
    empty = (
        "\nzero everywhere: no evidence for it" if not np.any(cam > 0) else ""
    )  # else a flat blue reads as 'all'
    axes[1].set_title(f"network input, {cam_label}{crop}{empty}", fontsize=8)
    colour_axes = fig.add_axes(
        ((side + 2 * panel_w + gap + 0.12) / fig_w, foot / fig_h, 0.15 / fig_w, panel_h / fig_h)
    )
    colour_bar = fig.colorbar(heat, cax=colour_axes)
    colour_bar.solids.set_alpha(1)
    colour_bar.set_label(f"{cam_label} (1 = this image's strongest)", fontsize=7)
    colour_bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=8, y=1 - 0.08 / fig_h, va="top")
    fig.text(0.5, 0.12 / fig_h, footer, ha="center", va="bottom", fontsize=8, color="firebrick")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
