"""The deployment record is enough: a deployer's script that reads only the exported ONNX file,
preprocessing.json and a DICOM file (docs/deployer_example.py, without covidseg) gives covidseg-predict's
probability; the record names the DICOM steps, the exact resize calls and every threshold with its
comparison, and the ONNX file its classes, threshold, rule and intended use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from covidseg.checkpoints import operating_point, read_checkpoint
from covidseg.data.transforms import resize_image, resize_mask
from covidseg.deploy.networks import onnx_session
from covidseg.deploy.steps import mask_resize, thresholds
from covidseg.export import export
from tests.conftest import REPO, run_cli
from tests.data.dicom_files import write_dicom

DEPLOYER = REPO / "docs" / "deployer_example.py"
TOLERANCE = 1e-5  # float32 network, same preprocessing: only the runtimes' arithmetic differs


@pytest.fixture(scope="module")
def exported(tiny_classifier_run, tmp_path_factory) -> Path:
    """The session's tiny classifier (raw input, two classes) exported in process: no training here."""
    out = tmp_path_factory.mktemp("export")
    cfg = {
        "ckpt_path": str(tiny_classifier_run / "checkpoints" / "best.ckpt"),
        "out_dir": str(out),
        "segmenter": {"ckpt_path": None},
        "paths": {"cache_dir": os.environ["COVIDSEG_CACHE_DIR"]},
    }
    export(OmegaConf.create(cfg))
    return out


def hospital_dicom(path: Path, external_actualmed: Path) -> Path:
    """A real radiograph as a modality might store it: 12-bit MONOCHROME1 (inverted), with Rescale
    Slope/Intercept and a window that clips both ends of the range."""
    png = sorted(external_actualmed.rglob("*.png"))[0]
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.uint16)
    stored = (255 - pixels) * 12 + 100  # 100 .. 3160 of 4095
    return write_dicom(path, stored, "MONOCHROME1", bits_stored=12, window=(800, 1400), rescale=(0.5, -20))


@pytest.mark.slow
def test_a_deployer_script_without_covidseg_reproduces_covidseg_predict(
    exported, external_actualmed, tmp_path
):
    dicom = hospital_dicom(tmp_path / "scan.dcm", external_actualmed)
    run_cli(
        "covidseg-predict",
        f"ckpt_path={json.loads((exported / 'preprocessing.json').read_text())['source']['checkpoint']}",
        f"inputs={dicom}",
        f"hydra.run.dir={tmp_path / 'predict'}",
    )
    expected = pd.read_csv(tmp_path / "predict" / "predictions.csv").iloc[0]
    assert pd.isna(expected["error"])
    # covidseg made unimportable: the script may use only the exported files and public libraries
    blocked = "import runpy, sys; sys.modules['covidseg'] = None; sys.argv = sys.argv[1:]; "
    blocked += "runpy.run_path(sys.argv[0], run_name='__main__')"
    result = subprocess.run(
        [sys.executable, "-c", blocked, str(DEPLOYER), str(exported), str(dicom)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)
    assert abs(got["prob_covid"] - expected["prob_covid"]) < TOLERANCE
    assert abs(got["prob_normal"] - expected["prob_normal"]) < TOLERANCE
    assert got["predicted"] == expected["predicted"]
    assert got["intended_use"].startswith("Research use only")


@pytest.mark.slow
def test_the_onnx_file_and_the_record_say_how_to_read_the_output(exported):
    record = json.loads((exported / "preprocessing.json").read_text())
    meta = onnx_session(exported / "classifier.onnx").get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == record["classes"] == ["normal", "covid"]
    assert float(meta["threshold"]) == record["output"]["threshold"] and meta["threshold_comparison"] == ">"
    assert meta["positive_class"] == "covid" and meta["activation"] == "sigmoid"
    assert meta["intended_use"] == record["intended_use"] and "not for diagnosis" in meta["intended_use"]
    assert meta["source_checkpoint_sha1"] == record["source"]["checkpoint_sha1"]
    steps = " ".join(record["decoding"]["dicom"]["steps"])
    for step in ("apply_modality_lut", "RescaleSlope", "apply_voi_lut", "WindowCenter", "MONOCHROME1"):
        assert step in steps
    # in covidseg's order: modality LUT, then the window, then the inversion
    assert steps.index("apply_modality_lut") < steps.index("apply_voi_lut") < steps.index("MONOCHROME1")
    assert record["resize"]["resample"] == "BOX" and "Resampling.BOX" in record["resize"]["call"]
    assert record["mask_resize"] is None  # raw input: no mask
    # the operating point chosen on validation and stored in the checkpoint (covidseg.checkpoints)
    point = operating_point(read_checkpoint(record["source"]["checkpoint"], "the exported run's"))
    assert (
        record["output"]["threshold"] == point["threshold"]
        and record["output"]["threshold_rule"] == point["rule"]
    )
    assert record["thresholds"] == [
        {
            "where": "output: the decision",
            "value": point["threshold"],
            "comparison": ">",
            "rule": f"covid where p(covid) > {point['threshold']} (strictly greater)",
        }
    ]


def test_the_recorded_resize_calls_are_covidsegs():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (97, 131), dtype=np.uint8)
    recorded = Image.fromarray(image).resize((64, 64), Image.Resampling.BOX)
    assert np.array_equal(np.asarray(recorded), resize_image(image, 64))
    mask = (rng.random((50, 50)) > 0.5).astype(np.uint8)
    described = mask_resize()
    resized = Image.fromarray(mask.astype(np.float32)).resize(
        (37, 37), getattr(Image.Resampling, described["resample"])
    )
    assert np.array_equal(
        (np.asarray(resized) >= described["threshold"]).astype(np.uint8), resize_mask(mask, 37)
    )
    # the comparison as recorded: a pixel exactly half lung stays lung (>=, not >)
    assert resize_mask(np.array([[1, 0], [1, 0]], np.uint8), 1).item() == 1


def test_every_threshold_is_listed_with_its_comparison():
    output = {"threshold": 0.37, "positive_class": "covid"}
    listed = thresholds(output, {"threshold": 0.6})
    assert [(t["value"], t["comparison"]) for t in listed] == [(0.6, ">="), (0.5, ">="), (0.37, ">")]
    assert thresholds({"threshold": None, "positive_class": None}, None) == []  # softmax + argmax
