"""The exact operations preprocessing.json names for a deployer: how a file becomes covidseg's uint8 image
(DICOM included: modality LUT, VOI LUT / window, MONOCHROME1), how images and masks are resized (library,
filter, rounding), and every threshold with its comparison.

Each text follows the code it describes (covidseg.data.decoding, covidseg.data.dicom,
covidseg.data.transforms, covidseg.models.segmenter.postprocess, covidseg.models.metrics), and the values
come from those modules' constants, so the record says what covidseg does, not what it once did.

The comparisons differ on purpose: the classifier's decision is `p > threshold` (covidseg.models.metrics,
as torchmetrics counts a positive), the segmenter's lung mask is `p >= threshold` and a resized mask keeps
pixels `>= 0.5`. The mask rules stay as they are: a tie of the segmenter's float32 probability with the
threshold is practically never met, while a resized mask meets 0.5 exactly on every pixel half covered by
lung, which the mask rule keeps (thin borders survive); changing either would change every cached mask and
the inputs every segmented classifier was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL
import pydicom

from covidseg.data.dicom import DISPLAY_ATTRIBUTES
from covidseg.data.images import MIN_SIDE
from covidseg.data.transforms import IMAGE_RESAMPLING, MASK_RESAMPLING, MASK_THRESHOLD

INTENDED_USE = (
    "Research use only - not for diagnosis. Classifies frontal chest radiographs into the classes named; "
    "not validated for clinical use, other views, children or devices it was not trained on. Inputs must "
    "be prepared as preprocessing.json says."
)


def image_resize() -> dict[str, Any]:
    """How covidseg resizes a uint8 image to a square (covidseg.data.transforms.resize_image and the image
    cache): Pillow's resize with the BOX filter."""
    return {
        "library": f"Pillow {PIL.__version__}",
        "resample": IMAGE_RESAMPLING.name,
        "call": "PIL.Image.fromarray(uint8 image).resize((size, size), resample=PIL.Image.Resampling."
        f"{IMAGE_RESAMPLING.name}) (reducing_gap=None)",
        "filter": f"{IMAGE_RESAMPLING.name}: each output pixel is the mean of the input pixels it covers, "
        "weighted by the covered area (antialiased when shrinking; when enlarging, each output pixel "
        "takes the input pixel under its centre), rounded to uint8 by Pillow",
        "aspect": "stretched to the square, never padded or cropped",
    }


def mask_resize() -> dict[str, Any]:
    """How covidseg resizes a 0/1 lung mask (covidseg.data.transforms.resize_mask)."""
    return {
        "library": f"Pillow {PIL.__version__}",
        "resample": MASK_RESAMPLING.name,
        "threshold": MASK_THRESHOLD,
        "comparison": ">=",
        "call": f"PIL.Image.fromarray(mask.astype(numpy.float32)).resize((size, size), "
        f"resample=PIL.Image.Resampling.{MASK_RESAMPLING.name}) (mode F; reducing_gap=None), then "
        f"mask = resized >= {MASK_THRESHOLD}",
        "filter": f"Pillow's {MASK_RESAMPLING.name}: a triangle filter whose support widens by the reduction "
        "factor when shrinking (antialiased), plain bilinear interpolation between pixel centres when "
        "enlarging; the same as torch.nn.functional.interpolate(mode='bilinear', align_corners=False, "
        "antialias=True), not OpenCV's INTER_LINEAR, which is not antialiased",
        "skipped": "when the mask already has the size",
    }


def dicom_steps() -> list[str]:
    """covidseg.data.dicom.to_grayscale_uint8, in order."""
    return [
        "read with pydicom.dcmread(file, force=True); refuse files without Rows/Columns, with NumberOfFrames "
        f"other than 1, SamplesPerPixel other than 1 or 3, a side under {MIN_SIDE} px, or more pixels than "
        "PIL.Image.MAX_IMAGE_PIXELS",
        "stored = ds.pixel_array (compressed transfer syntaxes through pydicom's decoder plugins)",
        "colour (SamplesPerPixel 3, 8-bit, RGB after pydicom): ITU-R 601 luma with PIL convert('L'), and "
        "nothing below applies",
        "modality LUT: values = pydicom.pixels.apply_modality_lut(stored, ds): the Modality LUT Sequence if "
        "given, else values = stored * RescaleSlope + RescaleIntercept, else unchanged",
        "VOI LUT: windowed = pydicom.pixels.apply_voi_lut(values, ds) (prefer_lut=True, first view): the VOI "
        "LUT Sequence if given (preferred when a window is given too), else the window WindowCenter / "
        "WindowWidth by VOILUTFunction (LINEAR by default, LINEAR_EXACT, SIGMOID), else no VOI transform",
        "output range [lo, hi] that becomes 0..255: with a VOI LUT Sequence 0 .. 2**LUTDescriptor[2] - 1; "
        "with a window what pydicom maps -inf and +inf to (apply_voi_lut on [-inf, inf]: 0 .. "
        "2**BitsStored - 1 unsigned, -2**(BitsStored-1) .. 2**(BitsStored-1) - 1 signed, or 0 .. "
        "2**bits - 1 of a Modality LUT Sequence, each through RescaleSlope/RescaleIntercept when both are "
        "given); without a VOI transform, 8-bit stored pixels: apply_modality_lut of [0, 255]; deeper "
        "ones: the image's own min .. max after the modality LUT",
        "share = (v - lo) / (hi - lo); PhotometricInterpretation MONOCHROME1 (high values dark): "
        "share = (hi - v) / (hi - lo) instead, so that air is dark as in MONOCHROME2",
        "pixel = clip(numpy.round(share * 255), 0, 255) as uint8 (round half to even); hi == lo gives 0",
        f"refuse an image of one value everywhere (blank); display attributes pydicom rejects "
        f"({', '.join(DISPLAY_ATTRIBUTES)}, LUT sequences) refuse the file",
    ]


def decoding(grayscale: str) -> dict[str, Any]:
    """The `decoding` section of preprocessing.json: file -> full-resolution uint8 grayscale image, before
    any resize.

    Args:
        grayscale: the convention for files other than DICOM (record.GRAYSCALE).
    """
    return {
        "images": grayscale,
        "exif_orientation": "applied first (PIL.ImageOps.exif_transpose), as a viewer shows the image",
        "dicom_detection": "the 'DICM' marker at byte 128, or a .dcm / .dicom suffix",
        "dicom": {
            "library": f"pydicom {pydicom.__version__}, numpy {np.__version__}",
            "steps": dicom_steps(),
        },
    }


def thresholds(output: Mapping[str, Any], postprocess: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every threshold between a file and a decision, with its comparison (module docstring).

    Args:
        output: preprocessing.json's `output` (threshold and positive_class for two classes).
        postprocess: the segmenter's post-processing settings; None without a segmenter.
    """
    found = []
    if postprocess is not None:
        cut = postprocess.get("threshold", 0.5)
        found += [
            {
                "where": "segmenter.steps: lung mask",
                "value": cut,
                "comparison": ">=",
                "rule": f"lung where sigmoid(lung_logit) >= {cut}",
            },
            {
                "where": "mask_resize: the resized mask",
                "value": MASK_THRESHOLD,
                "comparison": ">=",
                "rule": f"lung where the resized value >= {MASK_THRESHOLD}",
            },
        ]
    if output.get("threshold") is not None:
        positive = output["positive_class"]
        found.append(
            {
                "where": "output: the decision",
                "value": output["threshold"],
                "comparison": ">",
                "rule": f"{positive} where p({positive}) > {output['threshold']} (strictly greater)",
            }
        )
    return found


def onnx_metadata(record: Mapping[str, Any], network: str) -> dict[str, str]:
    """The ONNX file's metadata_props (strings): what the network is for and how to read its output, so the
    file alone says its classes, threshold, rule and intended use.

    Args:
        record: the content of preprocessing.json.
        network: classifier or segmenter.
    """
    source = record["source"]
    props = {
        "covidseg_network": network,
        "covidseg_version": str(source["covidseg_version"]),
        "covidseg_format": str(record["format"]),
        "source_checkpoint_sha1": str(source["checkpoint_sha1"]),
        "intended_use": str(record["intended_use"]),
        "preprocessing": "see preprocessing.json (written beside this file by covidseg-export)",
    }
    if network == "segmenter":
        mask = next(t for t in record["thresholds"] if t["where"].startswith("segmenter"))
        return props | {"output": "lung_logits: one logit per pixel", "mask_rule": mask["rule"]}
    output = record["output"]
    decision = {"threshold": "" if output.get("threshold") is None else str(output["threshold"])}
    return props | {
        "classes": json.dumps(list(record["classes"])),
        "activation": str(output["activation"]),
        "positive_class": str(output.get("positive_class") or ""),
        **decision,
        "threshold_comparison": ">" if output.get("threshold") is not None else "",
        "decision_rule": str(output["rule"]),
        **{f"output_{k}": str(v) for k, v in output.items() if k.startswith("threshold_") and v is not None},
    }
