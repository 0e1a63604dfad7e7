"""What covidseg writes survives a bad folder, a bad disk and a bad cell: exports written whole or not at all
(covidseg.outputs), checkpoints whose flipped bits are refused on load, CSV cells that no spreadsheet runs,
and a report that never pairs jobs trained at other image sizes or epochs."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

import lightning
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from covidseg.outputs import layout
from covidseg import outputs
from covidseg.checkpoints import AtomicCheckpointIO, read_checkpoint
from covidseg.data.split import read_split_file, write_splits
from covidseg.deploy.networks import load_torchscript
from covidseg.errors import UserError
from covidseg.export import export
from covidseg.models.classifier import Classifier, load_classifier
from covidseg.outputs import (
    folder_error,
    other_folder,
    output_folder,
    plain_cell,
    read_csv,
    safe_cell,
    write_csv,
)
from covidseg.report import build_report
from covidseg.report.collect import collect_jobs
from tests.conftest import REPO, run_cli, run_cli_refused
from tests.report.test_report import dataset, write_job

HINT = "Train one first."
EXPORTED = ["classifier.onnx", "classifier.torchscript.pt", layout.PREPROCESSING]


def save_classifier(path: Path, root: Path) -> Path:
    """A real (untrained) classifier checkpoint as covidseg's trainers write it: a timm test network at 32 px,
    written by AtomicCheckpointIO."""
    record = {"root": str(root), "image_size": 32, "input": "raw", "mean": 0.5, "std": 0.25}
    model = Classifier(backbone="test_resnet", data_config=record)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("classifier")
    return save_classifier(base / "checkpoints" / "best.ckpt", base)


def export_cfg(ckpt: Path, out_dir: Path) -> dict:
    return OmegaConf.create(
        {
            "ckpt_path": str(ckpt),
            "out_dir": str(out_dir),
            "paths": {"cache_dir": str(ckpt.parent / "cache")},
            "segmenter": {"ckpt_path": None},
        }
    )


def folder_listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- A: exports -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(classifier_ckpt, tmp_path_factory) -> tuple[Path, list]:
    """An export into a folder that does not exist yet, and what torch.jit.save was asked to write into."""
    targets = []
    real_save = torch.jit.save

    def recording_save(module, target, *args, **kwargs):
        targets.append(target)
        return real_save(module, target, *args, **kwargs)

    out = tmp_path_factory.mktemp("export") / "new" / "deploy"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.jit, "save", recording_save)
        patch.setattr(torch.onnx.ONNXProgram, "save", lambda *a, **k: pytest.fail("ONNX written by torch"))
        export(export_cfg(classifier_ckpt, out))
    return out, targets


def test_an_export_into_a_missing_folder_creates_it_and_leaves_only_whole_files(classifier_ckpt, exported):
    out, _ = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORTED)  # no temporary or probe file left
    record = json.loads((out / layout.PREPROCESSING).read_text())
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected = load_classifier(classifier_ckpt).eval().net(x).numpy()
    session = onnxruntime.InferenceSession(str(out / record["classifier"]["onnx"]))
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - expected).max() < 1e-4
    with torch.no_grad():
        scripted = load_torchscript(out / record["classifier"]["torchscript"])(x).numpy()
    assert np.abs(scripted - expected).max() < 1e-4


def test_torch_never_writes_an_export_file_itself(exported):
    """torch.jit.save into a file on a full disk aborts the process (an uncaught C++ exception) and leaves
    a truncated file: the networks are serialised into memory and written by covidseg.outputs."""
    _, targets = exported
    assert targets and all(isinstance(t, io.BytesIO) for t in targets)


class FillsUp:
    """A file whose disk fills up halfway through the first write."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)


def fail_on_file(monkeypatch, name: str, error: int | None) -> None:
    """covidseg.outputs' writes of the file named `name` fail: with `error` when opened, or (None) with a
    disk that fills up halfway through it."""

    def failing_open(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(f".{name}"):
            if error is not None:
                raise OSError(error, os.strerror(error), str(path))
            return FillsUp(open(path, mode, *args, **kwargs))
        return open(path, mode, *args, **kwargs)

    for module in (outputs.files, outputs.folders):
        monkeypatch.setattr(module, "open", failing_open, raising=False)


@pytest.mark.parametrize("failing", ["classifier.onnx", "classifier.torchscript.pt", layout.PREPROCESSING])
def test_a_full_disk_during_an_export_keeps_the_previous_export_whole(
    classifier_ckpt, exported, tmp_path, monkeypatch, failing
):
    out = tmp_path / "deploy"
    shutil.copytree(exported[0], out)  # an older export, complete
    before = folder_listing(out)
    fail_on_file(monkeypatch, failing, None)
    with pytest.raises(UserError) as refused:
        export(export_cfg(classifier_ckpt, out))
    message = str(refused.value)
    assert (
        f"Cannot write the output folder {out}: no space left on its disk" in message and "MB free" in message
    )
    assert "give another folder with out_dir=<folder>" in message and "\n" not in message
    assert folder_listing(out) == before  # every file of the older export as it was, nothing half-written


def test_a_read_only_folder_is_refused_before_the_export_starts(classifier_ckpt, tmp_path, monkeypatch):
    # Tests run as root, which a read-only mode bit does not stop: the file system's answer is simulated.
    fail_on_file(monkeypatch, "covidseg-write-probe", errno.EROFS)
    monkeypatch.setattr("covidseg.export.export_network", lambda *a: pytest.fail("exported anyway"))
    out = tmp_path / "deploy"
    with pytest.raises(UserError, match=rf"Cannot write the output folder {out}: it is on a read-only file"):
        export(export_cfg(classifier_ckpt, out))
    assert list(out.iterdir()) == []


def test_an_export_folder_under_a_file_exits_2_naming_the_file(classifier_ckpt, tmp_path, cli_refused):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    out = blocker / "deploy"
    cli_refused(
        "covidseg-export",
        f"ckpt_path={classifier_ckpt}",
        f"out_dir={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        expected=rf"Cannot write the output folder {out}: {blocker} is a file, not a folder\. Remove or "
        r"rename that file, or give another folder with out_dir=<folder>\.",
    )
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errno.EACCES, r": permission denied\. Make it writable for this user, or"),
        (
            errno.ENOSPC,
            r": no space left on its disk \([\d,]+ MB free, the files need 2\.0 MB\)\. Free space",
        ),
        (errno.EDQUOT, r": disk quota exceeded\. Free space on that disk, or"),
        (errno.ENOENT, r": it does not exist\. Create it, or"),
        (errno.EIO, r"Could not write the output folder .*Input/output error"),
    ],
)
def test_file_system_errors_name_the_folder_and_the_fix(tmp_path, error, expected):
    err = OSError(error, os.strerror(error))
    message = str(folder_error(tmp_path, err, other_folder("out_dir"), needed=2_000_000))
    assert str(tmp_path) in message and re.search(expected, message), message
    assert message.endswith("give another folder with out_dir=<folder>.")


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(
        UserError, match=rf"Cannot write the output folder {target}: {target} is a file, not a"
    ):
        output_folder(target, other_folder("out_dir"))


def test_writes_into_a_missing_folder_say_so(tmp_path):
    with pytest.raises(
        UserError, match=rf"Cannot write the output folder {tmp_path / 'gone'}: it does not exist"
    ):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "gone" / "x.csv")
    assert list(tmp_path.iterdir()) == []


# -- B: checkpoint CRCs ----------------------------------------------------------------------------------
def flip_a_bit_in_the_largest_tensor(path: Path, damaged: Path) -> Path:
    """`damaged`: a copy of checkpoint `path` with one bit changed in the middle of its largest tensor's
    data."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = max((r for r in archive.infolist() if "/data/" in r.filename), key=lambda r: r.file_size)
    name_length, extra_length = struct.unpack_from("<HH", raw, record.header_offset + 26)
    start = record.header_offset + 30 + name_length + extra_length  # the local header, then the data
    raw[start + record.file_size // 2] ^= 0x10
    damaged.write_bytes(raw)
    return damaged


def test_a_flipped_bit_is_refused_on_every_load_naming_the_file(tmp_path):
    path = tmp_path / "last.ckpt"
    weights = torch.arange(10_000, dtype=torch.float32)
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"epoch": 1, "state_dict": {"w": weights}}, path)
    with zipfile.ZipFile(path) as archive:
        assert all(r.CRC for r in archive.infolist() if r.file_size)  # covidseg writes the CRCs
    damaged = flip_a_bit_in_the_largest_tensor(path, tmp_path / "damaged.ckpt")
    # torch.load itself checks no CRC: the changed weight would be used as it is
    loaded = torch.load(damaged, weights_only=True, mmap=True)["state_dict"]["w"]
    assert int((loaded != weights).sum()) == 1
    expected = rf"^{damaged} is damaged: its record \S+/data/\d+ does not match the CRC-32 written with it"
    with pytest.raises(UserError, match=expected):
        read_checkpoint(damaged, HINT)
    with pytest.raises(UserError, match=expected):  # resume and trainer.test read through the writer
        writer.load_checkpoint(damaged, weights_only=True)
    assert read_checkpoint(path, HINT)["epoch"] == 1  # the undamaged file loads as before


def test_predict_with_a_damaged_checkpoint_exits_2_naming_it(classifier_ckpt, tmp_path, cli_refused):
    damaged = flip_a_bit_in_the_largest_tensor(classifier_ckpt, tmp_path / "best.ckpt")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40), np.uint8) + 80).save(image)
    cli_refused(
        "covidseg-predict",
        f"ckpt_path={damaged}",
        f"inputs={image}",
        f"hydra.run.dir={tmp_path / 'run'}",
        expected=rf"{damaged} is damaged: .*Copy it again from where it came from, or retrain",
    )


def test_checkpoints_written_without_crcs_still_load(tmp_path):
    """covidseg wrote its checkpoints without CRCs before it kept them: those load as before, unchecked (a
    flipped bit in one goes unnoticed; retraining gives a checked file)."""
    from torch.utils.serialization import config

    # torch's own patch: pytest's monkeypatch deletes a config entry on undo, and every later save fails.
    with config.patch({"save.compute_crc32": False}):
        torch.save({"epoch": 3, "state_dict": {"w": torch.ones(1000)}}, tmp_path / "old.ckpt")
    with zipfile.ZipFile(tmp_path / "old.ckpt") as archive:
        assert not any(r.CRC for r in archive.infolist())
    assert read_checkpoint(tmp_path / "old.ckpt", HINT)["epoch"] == 3


# -- C: CSV cells ----------------------------------------------------------------------------------------
FORMULAS = ["=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", '=HYPERLINK("http://x")']
TEXT_KEPT = ["normal", "covid-19", "a=b", "", "images/=x.png", "-0.5", "+3", "-1e-3", ".5"]


def test_formula_cells_are_quoted_and_numbers_and_plain_text_kept():
    assert [safe_cell(c) for c in FORMULAS] == ["'" + c for c in FORMULAS]
    assert [safe_cell(c) for c in TEXT_KEPT] == TEXT_KEPT  # numbers written as text are no formulas
    for value in (-0.5, -3, np.float32(-2.5), float("nan"), None):
        assert safe_cell(value) is value
    for cell in [*FORMULAS, *TEXT_KEPT, "'=1", "''-x", "'plain", "'"]:
        assert plain_cell(safe_cell(cell)) == cell  # what covidseg reads back is what it was given


def test_a_csv_quotes_formula_cells_and_reads_back_unchanged(tmp_path):
    frame = pd.DataFrame(
        {
            "path": ["=1+2.png", "-x.png", "a.png"],
            "label": ["-1", "@n", "covid"],
            "prob_covid": [-0.5, 0.25, 0.001],
            "error": ["", "=cmd()", ""],
        }
    )
    write_csv(frame, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[1:] == ["'=1+2.png,-1,-0.5,", "'-x.png,'@n,0.25,'=cmd()", "a.png,covid,0.001,"]
    back = read_csv(tmp_path / "t.csv", dtype={"label": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(back, frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_splits_csv_quotes_formula_paths_and_still_works_as_a_split_file(tmp_path):
    table = pd.DataFrame(
        {
            "path": ["=a.png", "b.png", "+c.png"],
            "label": ["covid", "normal", "normal"],
            "patient_id": ["@p1", "p2", "-3"],
            "split": ["train", "test", "val"],
        }
    )
    write_splits(table, tmp_path / "splits.csv")
    text = (tmp_path / "splits.csv").read_text()
    assert "'=a.png,covid,'@p1,train" in text and "'+c.png,normal,-3,val" in text
    assert list(read_split_file(tmp_path / "splits.csv", table)) == ["train", "test", "val"]


def test_predictions_csv_quotes_formula_paths_and_reads_back_as_inputs(classifier_ckpt, tmp_path, cli):
    images = tmp_path / "images"
    images.mkdir()
    names = ["=1+2.png", "@x.png", "-y.png", "plain.png"]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(images / name)
    pd.DataFrame({"path": names}).to_csv(images / "inputs.csv", index=False)
    run = tmp_path / "run"
    cli(
        "covidseg-predict",
        f"ckpt_path={classifier_ckpt}",
        f"inputs={images / 'inputs.csv'}",
        f"hydra.run.dir={run}",
    )
    rows = (run / "predictions.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["'=1+2.png", "'@x.png", "'-y.png", "plain.png"]
    predictions = read_csv(run / "predictions.csv")
    assert list(predictions["path"]) == names and predictions["error"].isna().all()
    # predictions.csv beside the images works as the next run's inputs: its paths read back as written
    from covidseg.inference.prediction import collect_inputs

    (images / "again.csv").write_bytes((run / "predictions.csv").read_bytes())
    files, shown = collect_inputs(str(images / "again.csv"))
    assert shown == names and files == [str(images / n) for n in names]


def test_every_csv_covidseg_writes_goes_through_write_csv():
    writers = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted((REPO / "covidseg").rglob("*.py"))
        if path.name != "files.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if ".to_csv(" in line
    ]
    assert writers == []


# -- D: the report and jobs trained differently ----------------------------------------------------------
def settings_sweep(sweep: Path, jobs: list[tuple[str, int, int]], backbone: str = "resnet18") -> Path:
    """Three seeds of `backbone` per (input, image size, max_epochs), on the test report's synthetic data."""
    images, index = dataset(), 0
    for input_, size, epochs in jobs:
        for seed in range(3):
            patients = np.random.default_rng(seed).permutation(45)[:15]
            test = images[images["patient_id"].isin([f"pat{p}" for p in patients])]
            job = write_job(sweep, index, backbone, input_, seed, test)
            cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
            cfg.data.image_size, cfg.trainer.max_epochs = size, epochs
            OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
            index += 1
    return sweep


def models_in(text: str, heading: str) -> list[tuple[str, str]]:
    from tests.report.test_report import table_rows

    return [tuple(c.strip() for c in r.split("|")[1:3]) for r in table_rows(text, heading)]


@pytest.mark.parametrize(
    ("segmented", "header", "models"),
    [
        (
            (128, 2),
            "image size 64 / 128, 2 epoch(s) max (**the jobs differ in image size**",
            ("64 px", "128 px"),
        ),
        (
            (64, 5),
            "image size 64, 2 / 5 epoch(s) max (**the jobs differ in epochs**",
            ("2 epochs", "5 epochs"),
        ),
        (
            (128, 5),
            "image size 64 / 128, 2 / 5 epoch(s) max (**the jobs differ in image size and epochs**",
            ("64 px · 2 epochs", "128 px · 5 epochs"),
        ),
    ],
    ids=["image size", "epochs", "both"],
)
def test_raw_and_segmented_jobs_trained_differently_are_not_paired(tmp_path, segmented, header, models):
    sweep = settings_sweep(tmp_path / "sweep", [("raw", 64, 2), ("segmented", *segmented)])
    text = build_report(sweep, n_boot=50).read_text()
    raw, other = (f"resnet18 · {m}" for m in models)
    assert header in text
    assert models_in(text, "## Internal test set") == [(raw, "raw"), (other, "segmented")]
    comparison = text.split("### Compared − raw")[1].split("\n## ")[0]
    assert "_No model has both raw and segmented (or lungs_removed) runs._" in comparison
    assert f"- resnet18, segmented − raw: `{raw}` raw, `{other}` segmented" in comparison
    assert "p (paired t)" not in text and "p (bootstrap)" not in text
    results = pd.read_csv(sweep / "results.csv")
    assert list(results["model"]) == [raw] * 3 + [other] * 3 and set(results["backbone"]) == {"resnet18"}
    assert list(results["image_size"]) == [64] * 3 + [segmented[0]] * 3


def test_a_sweep_over_image_sizes_pairs_raw_and_segmented_at_each_size(tmp_path):
    jobs = [("raw", 64, 2), ("segmented", 64, 2), ("raw", 128, 2), ("segmented", 128, 2)]
    sweep = settings_sweep(tmp_path / "sweep", jobs)
    assert list(dict.fromkeys(collect_jobs(sweep)["model"])) == ["resnet18 · 64 px", "resnet18 · 128 px"]
    text = build_report(sweep, n_boot=50).read_text()
    paired = models_in(text, "### Compared − raw")
    assert {m for m, _ in paired} == {"resnet18 · 64 px", "resnet18 · 128 px"}
    assert {i for _, i in paired} == {"segmented"} and "Not paired" not in text
    assert (sweep / "curves_resnet18_64_px.png").is_file() and (
        sweep / "curves_resnet18_128_px.png"
    ).is_file()


def test_jobs_with_one_image_size_and_epochs_keep_plain_backbone_names(tmp_path):
    sweep = settings_sweep(tmp_path / "sweep", [("raw", 64, 2), ("segmented", 64, 2)])
    write_job(sweep, 6, "=HYPERLINK(1)", "raw", 0, None)  # a failed job of a formula-like backbone
    text = build_report(sweep, n_boot=50).read_text()
    assert "image size 64, 2 epoch(s) max; patient-level" in text and "the jobs differ" not in text
    assert models_in(text, "## Internal test set") == [("resnet18", "raw"), ("resnet18", "segmented")]
    assert "p (paired t)" in text and "Not paired" not in text
    assert "\n6,6,=" not in (sweep / "results.csv").read_text()
    assert ",'=HYPERLINK(1)," in (sweep / "results.csv").read_text()
