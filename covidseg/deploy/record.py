"""preprocessing.json: everything a deployer must do around the exported networks to get covidseg's outputs.

Built from the classifier checkpoint's own record (its data config, as training used it) and, for
segmented-input checkpoints, the segmenter and mask settings its training used, so it cannot drift from
what the networks were trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from covidseg import __version__
from covidseg.data.datamodule import CXRDataModule
from covidseg.data.intensity import CLAHE_TILES
from covidseg.data.transforms import IMAGE_RESAMPLING, MASK_RESAMPLING, MASK_THRESHOLD
from covidseg.deploy.steps import INTENDED_USE, decoding, image_resize, mask_resize, thresholds
from covidseg.masks import MaskSource
from covidseg.models.classifier import Classifier
from covidseg.models.metrics import POSITIVE_THRESHOLD

FORMAT = "covidseg-export/1"

GRAYSCALE = (
    "8-bit grayscale, 0 = black (covidseg.data.images): 8-bit images (L, P, RGB, RGBA, CMYK, ...) by "
    "ITU-R 601 luma (PIL convert('L')), transparent pixels composited onto black first; 16/32-bit integer or "
    "float images rescaled linearly from the image's own min..max to 0..255 and rounded; DICOM files as "
    "decoding.dicom.steps say (modality LUT, VOI LUT / window, MONOCHROME1 inverted)."
)
RESIZE = (
    "stretch (no padding) to a size x size square with area averaging (Pillow Image.resize with "
    f"Resampling.{IMAGE_RESAMPLING.name}, see resize), on the uint8 image"
)
NORMALISE = "float32 x = (pixel / 255 - mean) / std, shape (batch, 1, size, size)"


def classifier_steps(data: CXRDataModule, background: int | None) -> list[str]:
    """The classifier's input pipeline, in order, as covidseg's data module runs it."""
    load, size = data.load_size, data.image_size
    steps = [f"convert to {GRAYSCALE}", f"{RESIZE}, size = {load}"]
    if data.equalize == "hist":
        steps.append("global histogram equalisation (cv2.equalizeHist)")
    elif data.equalize == "clahe":
        steps.append(
            f"CLAHE (cv2.createCLAHE(clipLimit={data.clahe_clip}, tileGridSize={CLAHE_TILES}).apply)"
        )
    if data.input != "raw":
        keep = "outside" if data.input == "segmented" else "inside"
        steps.append(
            f"lung mask from the segmenter (see segmenter.steps) resized to {load} x {load} (mask_resize: "
            f"Pillow's {MASK_RESAMPLING.name} on the 0/1 mask as float, antialiased when shrinking, then "
            f">= {MASK_THRESHOLD}); every pixel {keep} the lungs set to {background}"
        )
        if data.crop_to_lungs:
            steps.append(
                f"crop to the mask's bounding box grown by round({data.crop_margin} x {load}) px on each "
                "side (clipped to the image; the whole image if the mask is empty), then "
                f"{RESIZE}, size = {size}"
            )
    steps.append(f"{NORMALISE} with mean = {data.mean}, std = {data.std}, size = {size}")
    return steps


def decision(classes: list[str], point: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How the network's output becomes probabilities and a predicted class (covidseg.models.metrics'
    rule, at the checkpoint's operating point: Classifier.decision_point; None: 0.5)."""
    if len(classes) == 2:
        return {
            "meaning": f"one logit per image: p({classes[1]}) = sigmoid(logit), p({classes[0]}) = 1 - p",
            "activation": "sigmoid",
            "positive_class": classes[1],
            "threshold": point["threshold"] if point else POSITIVE_THRESHOLD,
            "threshold_rule": point["rule"] if point else "fixed",
            "threshold_chosen_on": point.get("chosen_on") if point else "default",
            "rule": f"predict {classes[1]} when p({classes[1]}) > threshold (strictly greater), else "
            f"{classes[0]}",
        }
    return {
        "meaning": f"{len(classes)} logits per image, in the order of classes",
        "activation": "softmax",
        "positive_class": None,
        "threshold": None,
        "threshold_rule": None,
        "threshold_chosen_on": None,
        "rule": "predict the class with the highest probability (argmax)",
    }


def segmenter_section(masks: MaskSource, export: dict[str, Any]) -> dict[str, Any]:
    """The segmenter's part of preprocessing.json: its checkpoint, settings and steps from image to mask."""
    post = dict(masks.postprocess)
    size = masks.image_size
    return {
        **export,
        "checkpoint": str(masks.ckpt_path),
        "checkpoint_sha1": masks.ckpt_digest,
        "arch": masks.model.hparams.arch,
        "encoder": masks.model.hparams.encoder,
        "image_size": size,
        "mean": masks.mean,
        "std": masks.std,
        "postprocess": post,
        "steps": [
            f"convert to {GRAYSCALE}",
            f"{RESIZE}, size = {size}; no histogram equalisation (the segmenter sees plain images)",
            f"{NORMALISE} with mean = {masks.mean}, std = {masks.std}, size = {size}",
            "run the network: one lung logit per pixel, shape (batch, 1, size, size); p = sigmoid(logit)",
            f"mask = p >= {post.get('threshold', 0.5)}",
            f"keep the {post.get('keep_components', 2)} largest connected components (4-connectivity, "
            "scipy.ndimage.label; 0 keeps all)",
            "fill holes (scipy.ndimage.binary_fill_holes)"
            if post.get("fill_holes", True)
            else "no hole filling",
            f"dilate by a disk of radius {post.get('dilate_px', 0)} px (0: none)",
        ],
    }


def build_record(
    model: Classifier,
    ckpt_path: Path,
    ckpt_sha1: str,
    classifier_export: dict[str, Any],
    masks: MaskSource | None,
    segmenter_export: dict[str, Any] | None,
) -> dict[str, Any]:
    """The content of preprocessing.json: what a deployment must do to an image, and what the outputs mean.

    Args:
        model: the trained classifier; its recorded data config gives the preprocessing.
        ckpt_path: the classifier's checkpoint, recorded with its digest.
        ckpt_sha1: the checkpoint file's SHA-1 (file_digest).
        classifier_export: the classifier's record from export_network.
        masks: the lung masks the classifier was trained with; None for input=raw.
        segmenter_export: the segmenter's record from export_network; None without masks.
    """
    recorded = dict(model.hparams.data_config or {})
    data = CXRDataModule.from_record(recorded, cache_dir=None)  # defaults for keys older records lack
    classes = list(model.class_names)
    background = masks.background if masks is not None else None
    record = {
        "format": FORMAT,
        "source": {
            "checkpoint": str(ckpt_path),
            "checkpoint_sha1": ckpt_sha1,
            "covidseg_version": __version__,
            "torch_version": torch.__version__,
        },
        "classes": classes,
        "output": decision(classes, model.decision_point()),
        "classifier": {**classifier_export, "backbone": model.hparams.backbone},
        "preprocessing": {
            "input_mode": data.input,
            "image_size": data.image_size,
            "load_size": data.load_size,
            "mean": data.mean,
            "std": data.std,
            "equalize": data.equalize,
            "clahe_clip": data.clahe_clip,
            "clahe_tile_grid": list(CLAHE_TILES),
            "crop_to_lungs": data.crop_to_lungs if data.input != "raw" else False,
            "crop_margin": data.crop_margin,
            "background": background,
            "grayscale": GRAYSCALE,
            "steps": classifier_steps(data, background),
        },
        "segmenter": segmenter_section(masks, segmenter_export) if masks is not None else None,
    }
    # What a deployer outside Python needs exactly: file decoding (DICOM), the resize calls, every threshold.
    record["intended_use"] = INTENDED_USE
    record["decoding"] = decoding(GRAYSCALE)
    record["resize"] = image_resize()
    record["mask_resize"] = mask_resize() if masks is not None else None
    record["thresholds"] = thresholds(
        record["output"], dict(masks.postprocess) if masks is not None else None
    )
    return record
