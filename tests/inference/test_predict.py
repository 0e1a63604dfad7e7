"""covidseg.inference.prediction: which files `inputs=` names, classes from probabilities, the checkpoint and
its segmenter checked (the console script end to end: tests/e2e/test_predict.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from covidseg.data.images import file_digest
from covidseg.errors import UserError
from covidseg.inference.prediction import (
    check_classifier_checkpoint,
    collect_inputs,
    predicted_classes,
)
from covidseg.masks import trained_mask_source
from covidseg.models.segmenter import Segmenter
from covidseg.runs.checks import check_config
from tests.data.dicom_files import write_dicom


# -- which files `inputs=` names --------------------------------------------------------------------
def _png(path: Path, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 99, np.uint8)).save(path)
    return path


def test_inputs_folder_glob_csv_and_file(tmp_path):
    a, b = _png(tmp_path / "in" / "a.png"), _png(tmp_path / "in" / "sub" / "b.PNG")
    c = write_dicom(tmp_path / "in" / "sub" / "IM0001", np.zeros((40, 40), np.uint8))  # DICOM, no suffix
    write_dicom(tmp_path / "in" / "c.dcm", np.zeros((40, 40), np.uint8))
    _png(tmp_path / "in" / ".hidden" / "x.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    files, shown = collect_inputs(str(tmp_path / "in"))
    names = [Path(f).name for f in files]
    assert names == ["a.png", "c.dcm", "IM0001", "b.PNG"] and shown == files
    assert collect_inputs(str(tmp_path / "in" / "**" / "*.png"))[0] == [str(a)]  # glob: case-sensitive
    (tmp_path / "list.csv").write_text(f"path,id\nin/a.png,1\n{b},2\nin/sub/IM0001,3\nin/gone.png,4\n")
    files, shown = collect_inputs(str(tmp_path / "list.csv"))
    assert files == [str(a), str(b), str(c), str(tmp_path / "in" / "gone.png")]  # relative to the CSV
    assert shown == ["in/a.png", str(b), "in/sub/IM0001", "in/gone.png"]  # as written, for joining back
    assert collect_inputs(str(a)) == ([str(a)], [str(a)])
    with pytest.raises(UserError, match="matches no file"):
        collect_inputs(str(tmp_path / "*.nothing"))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d.mkdir(), "holds no image file"),
        (lambda d: None, "does not exist"),
        (lambda d: d.with_suffix(".csv").write_text("file\nx.png\n"), "has no `path` column"),
        (
            lambda d: d.with_suffix(".csv").write_text("path,id\nx.png,1\n,2\n"),
            r"line\(s\) \[3\] have an empty path",
        ),
    ],
)
def test_inputs_naming_no_image_are_a_user_error(tmp_path, make, expected):
    target = tmp_path / "inputs"
    make(target)
    spec = target.with_suffix(".csv") if target.with_suffix(".csv").exists() else target
    with pytest.raises(UserError, match=expected):
        collect_inputs(str(spec))


def test_predicted_class_uses_the_study_threshold_for_two_classes_and_argmax_for_more():
    probs = np.array([[0.5, 0.5], [0.49, 0.51], [0.9, 0.1]])
    assert predicted_classes(probs, ["normal", "covid"]) == (["normal", "covid", "normal"], 0.5)
    three = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert predicted_classes(three, ["a", "b", "c"]) == (["c", "a"], "argmax")


def test_bad_options_name_the_option_and_a_good_value():
    """covidseg-predict's options go through the one config check every entry point uses."""

    def options(**changed):
        return OmegaConf.create(
            {"batch_size": 64, "chunk_size": 1024, "num_workers": 0, "cam_method": "gradcam"} | changed
        )

    check_config(options(cam_method="gradcam++"))
    with pytest.raises(UserError, match=r"batch_size must be an integer >= 1, got 0. Set e.g. batch_size=64"):
        check_config(options(batch_size=0))
    with pytest.raises(UserError, match=r"cam_method must be one of \['gradcam', 'gradcam\+\+'\]"):
        check_config(options(cam_method="scorecam"))


# -- the checkpoint and its segmenter ---------------------------------------------------------------
def test_a_segmenter_checkpoint_is_refused_as_not_a_classifier(tmp_path):
    segmenter = Segmenter(image_size=64)
    path = tmp_path / "segmenter.ckpt"
    torch.save({"state_dict": segmenter.state_dict(), "hyper_parameters": dict(segmenter.hparams)}, path)
    with pytest.raises(
        UserError, match=r"segmenter.ckpt is a lung segmenter checkpoint; covidseg-predict needs"
    ):
        check_classifier_checkpoint(path)


def test_a_missing_or_changed_segmenter_is_refused(tmp_path):
    trained_with = tmp_path / "seg.ckpt"
    trained_with.write_bytes(b"the segmenter the classifier was trained with")
    record = {"ckpt_path": str(trained_with), "sha1": file_digest(trained_with)}
    assert trained_mask_source(record, tmp_path, "raw") is None
    trained_with.write_bytes(b"retrained since")
    with pytest.raises(UserError, match=r"seg.ckpt \(SHA-1 [0-9a-f]{40}\) is not the one the classifier was"):
        trained_mask_source(record, tmp_path, "segmented")
    with pytest.raises(UserError, match=r"segmenter checkpoint .*elsewhere.ckpt does not exist"):
        trained_mask_source(record, tmp_path, "segmented", str(tmp_path / "elsewhere.ckpt"))
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(b"the segmenter the classifier was trained with")
    with pytest.raises(UserError, match="is not a covidseg Segmenter checkpoint"):  # the SHA-1 check passed
        trained_mask_source(record, tmp_path, "segmented", str(copy))
