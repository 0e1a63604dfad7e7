"""A deployer's example: covidseg's probability for one DICOM radiograph from the exported files alone.

    python deployer_example.py <covidseg-export folder> <radiograph.dcm>

Reads preprocessing.json and classifier.onnx (what covidseg-export writes) and the DICOM file, with numpy,
pydicom, Pillow and onnxruntime; covidseg is not needed. It follows preprocessing.json's `decoding.dicom`
steps, `resize` and `preprocessing` for a classifier on raw input (data.input=raw) without histogram
equalisation, and reads the decision rule from the ONNX file's metadata. Prints one JSON object.
tests/deploy/test_deployer_example.py runs it against covidseg-predict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut


def dicom_to_uint8(path: Path) -> np.ndarray:
    """preprocessing.json's decoding.dicom.steps for a single-frame grayscale file."""
    ds = pydicom.dcmread(path, force=True)
    stored = ds.pixel_array
    if stored.ndim != 2:
        raise SystemExit(f"{path}: this example reads single-frame grayscale DICOM only")
    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence"):  # the VOI LUT Sequence, preferred over a window
        values = apply_voi_lut(values, ds)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds)
        lo, hi = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds))
    elif stored.dtype == np.uint8:
        lo, hi = (float(v) for v in apply_modality_lut(np.array([0, 255], dtype=np.uint8), ds))
    else:
        lo, hi = float(values.min()), float(values.max())
    values = values.astype(np.float64)
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    share = (hi - values) / (hi - lo) if monochrome1 else (values - lo) / (hi - lo)
    return np.clip(np.round(share * 255.0), 0, 255).astype(np.uint8)


def predict(export: Path, dicom: Path) -> dict:
    """The probability of each class and the decision, as covidseg-predict gives them."""
    record = json.loads((export / "preprocessing.json").read_text())
    pre = record["preprocessing"]
    if pre["input_mode"] != "raw" or pre["equalize"] != "none":
        raise SystemExit(
            "this example covers raw-input classifiers without equalisation (see preprocessing.steps)"
        )
    gray = dicom_to_uint8(dicom)
    resample = getattr(Image.Resampling, record["resize"]["resample"])
    size = pre["load_size"]
    image = np.asarray(Image.fromarray(gray).resize((size, size), resample), dtype=np.float32)
    x = ((image / 255.0 - pre["mean"]) / pre["std"])[None, None].astype(np.float32)
    session = onnxruntime.InferenceSession(str(export / record["classifier"]["onnx"]))
    meta = session.get_modelmeta().custom_metadata_map
    logits = session.run(None, {record["classifier"]["input"]["name"]: x})[0][0].astype(np.float64)
    classes = json.loads(meta["classes"])
    if meta["activation"] == "sigmoid":  # one logit: the positive class's
        positive = 1.0 / (1.0 + np.exp(-logits[0]))
        probs = [1.0 - positive, positive]
        # the rule as the file states it: p(positive) > threshold, strictly
        assert meta["threshold_comparison"] == ">"
        predicted = classes[1] if positive > float(meta["threshold"]) else classes[0]
    else:
        exp = np.exp(logits - logits.max())
        probs = list(exp / exp.sum())
        predicted = classes[int(np.argmax(probs))]
    return {
        **{f"prob_{c}": float(p) for c, p in zip(classes, probs)},
        "predicted": predicted,
        "threshold": meta["threshold"],
        "intended_use": meta["intended_use"],
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(json.dumps(predict(Path(sys.argv[1]), Path(sys.argv[2]))))
