"""covidseg-predict end to end: new images in, predictions.csv (and Grad-CAM overlays) out, prepared as in
training (its pieces in process: tests/inference/test_predict.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidseg.checkpoints import operating_point, read_checkpoint
from tests.conftest import run_cli
from tests.data.dicom_files import write_dicom


# -- as a user runs it ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_classifier(tiny_classifier_run) -> Path:
    return tiny_classifier_run / "checkpoints" / "best.ckpt"


@pytest.mark.slow
def test_predict_on_a_folder_writes_one_row_and_one_overlay_per_image(
    tiny_classifier, external_actualmed, tmp_path, cli
):
    out = tmp_path / "predict"
    cli(
        "covidseg-predict",
        f"ckpt_path={tiny_classifier}",
        f"inputs={external_actualmed}",
        "cam=true",
        f"hydra.run.dir={out}",
    )
    rows = pd.read_csv(out / "predictions.csv")
    images = sorted(str(p) for p in external_actualmed.rglob("*.png"))
    assert len(rows) == 44 and sorted(rows["path"]) == images
    assert list(rows.columns) == [
        "path",
        "prob_normal",
        "prob_covid",
        "predicted",
        "threshold",
        "threshold_rule",
        "cam",
        "error",
    ]
    point = operating_point(read_checkpoint(tiny_classifier, ""))  # chosen on validation by the run
    assert rows["error"].isna().all() and (rows["threshold"] == point["threshold"]).all()
    assert (rows["threshold_rule"] == point["rule"]).all()
    assert np.allclose(rows["prob_normal"] + rows["prob_covid"], 1, atol=1e-6)
    assert (rows["predicted"] == np.where(rows["prob_covid"] > point["threshold"], "covid", "normal")).all()
    overlays = sorted((out / "cam").glob("*.png"))
    assert len(overlays) == 44 and sorted(rows["cam"]) == [f"cam/{p.name}" for p in overlays]
    with Image.open(overlays[0]) as overlay:
        assert overlay.size[0] > 300


@pytest.mark.slow
def test_a_dicom_copy_gets_the_png_probabilities_and_unreadable_files_are_listed(
    tiny_classifier, external_actualmed, tmp_path, cli
):
    png = sorted(external_actualmed.rglob("*.png"))[0]
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"))
    write_dicom(tmp_path / "copy.dcm", pixels)
    write_dicom(tmp_path / "copy_m1.dcm", 255 - pixels, "MONOCHROME1")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "list.csv").write_text(f"path\n{png}\ncopy.dcm\ncopy_m1.dcm\nbroken.png\nmissing.png\n")
    out = tmp_path / "predict"
    cli(
        "covidseg-predict",
        f"ckpt_path={tiny_classifier}",
        f"inputs={tmp_path}/list.csv",
        f"hydra.run.dir={out}",
    )
    rows = pd.read_csv(out / "predictions.csv").set_index("path")
    for copy in ("copy.dcm", "copy_m1.dcm"):
        assert abs(rows.at[copy, "prob_covid"] - rows.at[str(png), "prob_covid"]) < 1e-5
    assert rows["error"].isna().sum() == 3
    assert (
        "broken.png" in rows.at["broken.png", "error"]
        and rows.loc["broken.png", "prob_covid":"predicted"].isna().all()
    )
    assert "Cannot read image" in rows.at["missing.png", "error"]


@pytest.mark.slow
def test_predict_with_no_readable_image_exits_2_naming_the_problem(tiny_classifier, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.png").write_bytes(b"not a png")
    out = tmp_path / "predict"
    result = run_cli(
        "covidseg-predict",
        f"ckpt_path={tiny_classifier}",
        f"inputs={tmp_path}/in",
        f"hydra.run.dir={out}",
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert "None of the 1 file(s)" in output and "scan.png" in output
    assert pd.read_csv(out / "predictions.csv")["error"].str.contains("scan.png").all()
