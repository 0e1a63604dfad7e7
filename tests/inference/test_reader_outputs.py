"""covidseg-predict for a reader: overlays at the image's own aspect ratio that name the positive class's
probability, the Grad-CAM class chosen, predictions.csv keeping the input's columns and the DICOM
identifiers, and one row per patient (aggregate=patient)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from covidseg.data.dicom import identifiers
from covidseg.errors import UserError
from covidseg.inference.overlays import RESEARCH_USE, save_cam_overlay
from covidseg.inference.prediction import cam_label, cam_target, collect_inputs, input_table, overlay_title
from covidseg.inference.prediction_table import check_aggregate, patient_rows, with_reader_columns
from tests.conftest import run_cli
from tests.data.dicom_files import write_dicom

GREY = 173  # a value no other part of an overlay has exactly (text is black, the heat map coloured)


def drawn_size(png: Path, value: int = GREY, min_run: int = 20) -> tuple[int, int]:
    """(width, height) in pixels of the region an overlay drew in grey `value`: the rows and columns holding
    more than `min_run` such pixels (stray anti-aliased text pixels of that grey stay below it)."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    grey = (pixels == value).all(axis=2)
    rows, cols = np.flatnonzero(grey.sum(axis=1) > min_run), np.flatnonzero(grey.sum(axis=0) > min_run)
    return cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1


def drawn_ratio(png: Path) -> float:
    width, height = drawn_size(png)
    return width / height


def _dicom(path: Path, pixels: np.ndarray, **tags: str) -> Path:
    write_dicom(path, pixels)
    ds = pydicom.dcmread(path)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path)
    return path


# -- the overlay ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", [(512, 421), (300, 600), (2000, 500)])
def test_an_overlay_keeps_the_images_width_to_height_ratio(tmp_path, source):
    frame = np.full((64, 64), GREY, np.uint8)  # the network's square frame
    cam = np.zeros((64, 64), np.float32)
    png = tmp_path / "overlay.png"
    save_cam_overlay(png, frame, frame, cam, source, "x.png\np(covid) = 0.514", "Grad-CAM of covid")
    # the left panel (the image alone) is the only region drawn in that grey
    assert drawn_ratio(png) == pytest.approx(source[0] / source[1], rel=0.02)
    assert max(drawn_size(png)) >= 570  # readable: 4.8 inches (a portrait's height) or more at 120 dpi


def test_a_crop_to_the_lungs_is_drawn_where_it_came_from(tmp_path):
    frame = np.full((64, 64), GREY, np.uint8)
    lungs = np.zeros((64, 64), np.uint8)
    lungs[16:48, 8:56] = 1
    cam = np.ones((32, 32), np.float32)  # the network's input covered only the crop
    png = tmp_path / "overlay.png"
    save_cam_overlay(png, frame, frame, cam, (400, 400), "t", "Grad-CAM of covid", lungs, (16, 48, 8, 56))
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    # the heat map at 1.0 (jet's dark red, alpha 0.45 over the grey): its region has the crop's 48:32 ratio
    heat = (np.abs(pixels - [152, 95, 95]) <= 2).all(axis=2)
    rows, cols = np.flatnonzero(heat.sum(axis=1) > 20), np.flatnonzero(heat.sum(axis=0) > 20)
    assert (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1) == pytest.approx(48 / 32, rel=0.03)
    # at the crop's place: rows 16..48 of the 64 px frame, i.e. the middle half of the panel's height
    panel = np.flatnonzero((pixels == GREY).all(axis=2).sum(axis=1) > 20)
    height = panel[-1] - panel[0] + 1
    assert (
        abs(rows[0] - (panel[0] + height / 4)) <= 2 and abs(rows[-1] + 1 - (panel[0] + height * 3 / 4)) <= 2
    )


def test_the_title_names_the_positive_class_and_the_rule():
    row = {
        "path": "a/b.png",
        "prob_normal": 0.486,
        "prob_covid": 0.514,
        "predicted": "covid",
        "threshold": 0.5,
    }
    title = overlay_title(pd.Series(row), ["normal", "covid"])
    assert "p(covid) = 0.514" in title and "predicted covid (covid if p(covid) > 0.5)" in title
    assert "p(normal)" not in title  # one probability, the positive class's
    three = pd.Series({"path": "c.png", "prob_a": 0.2, "prob_b": 0.7, "prob_c": 0.1, "predicted": "b"})
    assert "p(a) = 0.200, p(b) = 0.700, p(c) = 0.100" in overlay_title(three, ["a", "b", "c"])


def test_the_cam_class_is_the_positive_one_by_default_as_in_the_report():
    assert cam_target(None, ["normal", "covid"]) == 1
    assert cam_target(None, ["a", "b", "c"]) is None  # more classes: each image's predicted one
    assert cam_target("predicted", ["normal", "covid"]) is None
    assert cam_target("normal", ["normal", "covid"]) == 0
    with pytest.raises(UserError, match=r"cam_class must be .* \['normal', 'covid'\], got 'covd'"):
        cam_target("covd", ["normal", "covid"])
    assert cam_label(1, "normal", ["normal", "covid"], "gradcam") == "Grad-CAM of covid"
    assert cam_label(None, "normal", ["normal", "covid"], "gradcam++") == "Grad-CAM++ of normal (predicted)"


# -- predictions.csv -----------------------------------------------------------------------------------
def test_the_dicom_identifiers_are_read_from_the_header_alone(tmp_path):
    path = _dicom(
        tmp_path / "a.dcm", np.zeros((40, 40), np.uint8), StudyInstanceUID="1.2.3", AccessionNumber="ACC7"
    )
    sop = pydicom.dcmread(path).SOPInstanceUID
    truncated = tmp_path / "truncated.dcm"  # pixel data cut short: it would not decode
    truncated.write_bytes(path.read_bytes()[:-800])
    for file in (path, truncated):
        assert identifiers(file) == {
            "StudyInstanceUID": "1.2.3",
            "SOPInstanceUID": sop,
            "AccessionNumber": "ACC7",
        }
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "b.png")
    assert identifiers(tmp_path / "b.png") == {} and identifiers(tmp_path / "gone.dcm") == {}


def _rows(n: int, errors: dict[int, str] | None = None) -> pd.DataFrame:
    p = np.linspace(0.1, 0.9, n)
    rows = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "prob_normal": 1 - p, "prob_covid": p})
    rows["predicted"] = np.where(p > 0.5, "covid", "normal")
    rows["threshold"], rows["error"] = 0.5, None
    for i, error in (errors or {}).items():
        rows.loc[i, ["prob_normal", "prob_covid", "predicted"]] = [np.nan, np.nan, None]
        rows.loc[i, "error"] = error
    return rows


def test_predictions_keep_the_inputs_columns_and_rename_a_clash(tmp_path):
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "a.png")
    _dicom(tmp_path / "b.dcm", np.zeros((40, 40), np.uint8), AccessionNumber="ACC9")
    (tmp_path / "in.csv").write_text(
        "accession,path,predicted,AccessionNumber,study\nX1,a.png,yes,R1,\nX2,b.dcm,no,R2,S2\n"
    )
    files, _ = collect_inputs(str(tmp_path / "in.csv"))
    inputs = input_table(str(tmp_path / "in.csv"))
    table = with_reader_columns(_rows(2), files, inputs)
    assert list(table.columns) == [
        *_rows(2).columns,
        "StudyInstanceUID",
        "SOPInstanceUID",
        "AccessionNumber",
        "accession",
        "input_predicted",
        "input_AccessionNumber",
        "study",
    ]
    assert list(table["AccessionNumber"]) == ["", "ACC9"] and list(table["input_AccessionNumber"]) == [
        "R1",
        "R2",
    ]
    assert list(table["accession"]) == ["X1", "X2"] and list(table["study"]) == ["", "S2"]  # as written
    assert list(table["predicted"]) == ["normal", "covid"] and list(table["input_predicted"]) == ["yes", "no"]
    # images without a CSV or DICOM: covidseg's columns only
    assert list(with_reader_columns(_rows(2), [str(tmp_path / "a.png")] * 2, None).columns) == list(_rows(2))
    assert input_table(str(tmp_path / "a.png")) is None


def test_a_renamed_clash_takes_no_other_input_columns_name_and_unreadable_files_are_not_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for the DICOM identifiers would block forever
    rows = pd.DataFrame(
        {
            "path": ["a.png", str(fifo)],
            "prob_covid": [0.1, None],
            "predicted": ["normal", None],
            "error": [None, f"{fifo} is not a regular file"],
        }
    )
    inputs = pd.DataFrame({"predicted": [1, 2], "input_predicted": [3, 4], "accession": ["A", "B"]})
    out = with_reader_columns(rows, [str(tmp_path / "a.png"), str(fifo)], inputs)
    assert list(out.columns) == [
        "path",
        "prob_covid",
        "predicted",
        "error",
        "input_input_predicted",
        "input_predicted",
        "accession",
    ]
    assert list(out["input_input_predicted"]) == [1, 2] and list(out["input_predicted"]) == [3, 4]


def test_aggregate_patient_needs_a_csv_with_patient_ids():
    csv = pd.DataFrame({"patient_id": ["p1", "p2"]})
    check_aggregate(None, "mean", None, "scans/")
    check_aggregate("patient", "max", csv, "in.csv")
    with pytest.raises(UserError, match=r"inputs=scans/ is no CSV"):
        check_aggregate("patient", "mean", None, "scans/")
    with pytest.raises(UserError, match=r"has no patient_id column \(it has \['path', 'study'\]\)"):
        check_aggregate("patient", "mean", pd.DataFrame({"study": ["s"]}), "in.csv")
    with pytest.raises(UserError, match=r"line\(s\) \[3\] have an empty patient_id"):
        check_aggregate("patient", "mean", pd.DataFrame({"patient_id": ["p1", " "]}), "in.csv")
    with pytest.raises(UserError, match=r"aggregate_by must be one of \['mean', 'max'\], got 'median'"):
        check_aggregate("patient", "median", csv, "in.csv")
    with pytest.raises(UserError, match=r"aggregate must be null or one of \['patient'\], got 'study'"):
        check_aggregate("study", "mean", csv, "in.csv")


@pytest.mark.parametrize("how, expected", [("mean", [0.3, 0.7, np.nan]), ("max", [0.5, 0.9, np.nan])])
def test_one_row_per_patient_with_the_named_mean_or_max(how, expected):
    rows = _rows(6, errors={3: "unreadable", 5: "unreadable"})
    rows["prob_covid"] = [0.1, 0.5, 0.5, np.nan, 0.9, np.nan]
    table = patient_rows(rows, ["a", "a", "b", "b", "b", "c"], ["normal", "covid"], how)
    assert list(table.columns) == [
        "patient_id",
        "n_images",
        "n_unreadable",
        f"prob_covid_{how}",
        "predicted",
        "threshold",
    ]
    assert list(table["patient_id"]) == ["a", "b", "c"]
    assert list(table["n_images"]) == [2, 2, 0] and list(table["n_unreadable"]) == [0, 1, 1]
    assert np.allclose(table[f"prob_covid_{how}"], expected, equal_nan=True)
    assert list(table["predicted"]) == ["normal", "covid", None]  # max 0.5 of a: not above 0.5


def test_three_classes_get_each_classs_aggregate_and_the_highest():
    rows = pd.DataFrame(
        {"prob_a": [0.6, 0.2], "prob_b": [0.3, 0.7], "prob_c": [0.1, 0.1], "threshold": "argmax"}
    )
    rows["error"] = None
    table = patient_rows(rows, ["p", "p"], ["a", "b", "c"], "mean")
    assert np.allclose(table[["prob_a_mean", "prob_b_mean", "prob_c_mean"]].iloc[0], [0.4, 0.5, 0.1])
    assert table.at[0, "predicted"] == "b"


# -- the console script --------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_writes_reader_columns_patients_and_overlays(tiny_classifier_run, tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(40, 200, (150, 300), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tall = np.full((160, 80), GREY, np.uint8)
    tall[:8, :8] = 0  # not blank (covidseg refuses an image of one value)
    Image.fromarray(tall).save(tmp_path / "tall.png")
    _dicom(tmp_path / "scan.dcm", wide, StudyInstanceUID="1.2.840.1", AccessionNumber="ACC1")
    (tmp_path / "in.csv").write_text(
        "path,patient_id,accession\nwide.png,P1,A1\ntall.png,P1,A2\nscan.dcm,P2,A3\nmissing.png,P2,A4\n"
    )
    out = tmp_path / "predict"
    run_cli(
        "covidseg-predict",
        f"ckpt_path={tiny_classifier_run}/checkpoints/best.ckpt",
        f"inputs={tmp_path}/in.csv",
        "cam=true",
        "aggregate=patient",
        "aggregate_by=max",
        f"hydra.run.dir={out}",
    )
    rows = pd.read_csv(out / "predictions.csv", dtype={"AccessionNumber": str})
    assert list(rows["accession"]) == ["A1", "A2", "A3", "A4"] and list(rows["patient_id"][:2]) == ["P1"] * 2
    assert rows.at[2, "StudyInstanceUID"] == "1.2.840.1" and rows.at[2, "AccessionNumber"] == "ACC1"
    assert rows["AccessionNumber"].isna()[[0, 1, 3]].all()
    patients = pd.read_csv(out / "patient_predictions.csv")
    assert list(patients["patient_id"]) == ["P1", "P2"] and list(patients["n_unreadable"]) == [0, 1]
    assert patients.at[0, "prob_covid_max"] == pytest.approx(rows["prob_covid"][:2].max())
    # the grey tall image, 80 x 160 px, is drawn 1:2 (the network saw a 64 px square)
    assert drawn_ratio(out / rows.at[1, "cam"]) == pytest.approx(0.5, rel=0.02)
    with Image.open(out / rows.at[0, "cam"]) as wide_png, Image.open(out / rows.at[1, "cam"]) as tall_png:
        assert wide_png.size[0] > tall_png.size[0]
    assert RESEARCH_USE.startswith("Research use only")
