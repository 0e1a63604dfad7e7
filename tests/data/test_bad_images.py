"""One bad image file never stops a batch, and none is used silently wrong: per file, a UserError naming it
(the default), a counted skip (data.on_bad_image=skip), or an error row (covidseg-predict). Also EXIF
orientation, byte-identical copies under two patients, and lung masks that do not fit their image."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidseg.data import file_index
from covidseg.data.decoding import DECODED, decode
from covidseg.data.file_index import FileIndex
from covidseg.data.images import ImageCache
from covidseg.data.segmentation import LungMaskDataModule
from covidseg.data.split import SPLITS
from covidseg.data.store import ArrayStore
from covidseg.errors import UserError
from covidseg.inference.prediction import collect_inputs
from tests.conftest import make_dataset
from tests.data.dicom_files import write_dicom
from tests.data.test_bad_inputs import _datamodule, _edit_csv, _warnings, check_refused_or_skipped

PIXELS = np.random.default_rng(0).integers(0, 4000, (48, 40)).astype(np.uint16)


class Hung(BaseException):
    """Raised by `no_hang`; not an Exception (nor an OSError like TimeoutError), so that no per-file guard
    can turn it into a refusal."""


@pytest.fixture
def no_hang():
    """Fail instead of hanging for ever (a FIFO opened for reading waits for a writer)."""

    def timeout(signum, frame):
        raise Hung("still running after 30 s: a file was opened that blocks")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _jpeg_with_exif(exif: bytes | Image.Exif, pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=100, exif=exif)
    return buffer.getvalue()


def _exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif


def _broken_link(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(path.parent / "gone.png")


def _replace(path: Path, write) -> None:
    path.unlink(missing_ok=True)
    write(path)


BAD_FILES = {
    # name: (write the file at a path, the counted reason, what the message says)
    "dicom window width 0": (
        lambda p: write_dicom(p, PIXELS, window=(2000, 0)),
        "unreadable",
        r"display attributes of DICOM .*WindowWidth 0.*Window Width must be",
    ),
    "dicom rescale slope 0": (
        lambda p: write_dicom(p, PIXELS, rescale=(0, 5)),
        "blank",
        r"is blank: every pixel is 0 after decoding",
    ),
    "constant png": (
        lambda p: Image.fromarray(np.full((40, 40), 77, np.uint8)).save(p, "PNG"),
        "blank",
        r"is blank: every pixel is 77",
    ),
    "fully transparent png": (
        lambda p: Image.fromarray(np.full((40, 40, 4), (200, 90, 10, 0), np.uint8), "RGBA").save(p, "PNG"),
        "blank",
        r"is blank: every pixel is 0",
    ),
    "damaged exif": (
        lambda p: p.write_bytes(_jpeg_with_exif(b"Exif\0\0II*\0\x08\0\0\0\xff\xff", PIXELS.astype(np.uint8))),
        "unreadable",
        r"has a damaged EXIF block \(Corrupt EXIF data",
    ),
    "fifo": (os.mkfifo, "not_a_file", r"is a FIFO \(named pipe\), not a regular file"),
    "folder": (lambda p: p.mkdir(), "not_a_file", r"is a folder, not a regular file"),
    "broken link": (_broken_link, "unreadable", r"is a broken symbolic link \(its target .*gone.png"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_an_error_naming_it_or_a_counted_skip(tmp_path, case, caplog, no_hang):
    write, reason, message = BAD_FILES[case]
    check_refused_or_skipped(tmp_path, write, reason, message, caplog)


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_given_to_predict_gets_its_error_row(tmp_path, case, no_hang):
    write, _, message = BAD_FILES[case]
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(PIXELS.astype(np.uint8)).save(good)
    _replace(tmp_path / "in" / "bad.png", write)
    (tmp_path / "list.csv").write_text("path\nin/bad.png\nin/good.png\n")
    files, shown = collect_inputs(str(tmp_path / "list.csv"))
    assert shown == ["in/bad.png", "in/good.png"]
    listings = [files] if case == "folder" else [files, collect_inputs(str(tmp_path / "in"))[0]]
    for listed in listings:  # a CSV, or the folder itself (where a folder is not an image)
        table, dataset = _datamodule(tmp_path, tmp_path).prediction_inputs(listed)
        assert [Path(f).name for f in table["file"]] == ["bad.png", "good.png"]
        assert table.at[0, "error"] is not None and "bad.png" in table.at[0, "error"]
        assert pd.Series(table.at[0, "error"]).str.contains(message).all()
        assert table.at[1, "error"] is None and len(dataset) == 1


def test_fifos_and_broken_links_in_class_folders_are_counted_not_left_out(tmp_path, no_hang):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    (data / "metadata.csv").unlink()  # class folders
    os.mkfifo(data / "covid" / "pipe.png")
    os.mkfifo(data / "covid" / "pipe")  # no image suffix: not an image, never opened
    _broken_link(data / "normal" / "link.png")
    with pytest.raises(UserError, match=r"covid/pipe.png: it is a FIFO"):
        _datamodule(data, tmp_path).setup()
    dm = _datamodule(data, tmp_path, on_bad_image="skip")
    dm.setup()
    assert sorted(dm.stats["skipped_images"]) == ["covid/pipe.png", "normal/link.png"]
    assert dm.stats["skipped_image_reasons"] == {"not_a_file": 1, "unreadable": 1}
    assert dm.stats["unsupported_files"] == {"(none)": 1}
    names = [Path(f).name for f in collect_inputs(str(data))[0]]
    assert "pipe.png" in names and "link.png" in names and "pipe" not in names


def test_a_fifo_or_broken_link_given_alone_to_predict_is_listed(tmp_path, no_hang):
    os.mkfifo(tmp_path / "pipe.png")
    _broken_link(tmp_path / "link.png")
    for name in ("pipe.png", "link.png"):
        files, _ = collect_inputs(str(tmp_path / name))
        assert files == [str(tmp_path / name)]  # the link's own path, not its missing target
    assert collect_inputs(str(tmp_path / "*.png"))[0] == [
        str(tmp_path / "link.png"),
        str(tmp_path / "pipe.png"),
    ]


def test_a_file_replaced_by_a_fifo_after_the_check_is_not_waited_for(tmp_path, monkeypatch, no_hang):
    """The reader checks the opened file again: a FIFO put in the file's place is refused, not read."""
    regular, pipe = tmp_path / "a.png", tmp_path / "pipe.png"
    regular.write_bytes(b"x")
    os.mkfifo(pipe)
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # the check before opening saw a regular file
        return real_stat(regular if str(path) == str(pipe) else path, *args, **kwargs)

    monkeypatch.setattr(file_index.os, "stat", stat)
    with pytest.raises(file_index.NotARegularFile, match="is a FIFO"):
        file_index.read_file_bytes(str(pipe))


# -- EXIF orientation ------------------------------------------------------------------------------------
def test_exif_orientation_is_applied_and_old_cached_decodes_are_not_served(tmp_path):
    pixels = np.zeros((40, 64), np.uint8)
    pixels[:10, :20] = 255  # a bright block top left: where it ends up shows the orientation
    pixels[25:, 40:] = 120
    jpeg = tmp_path / "turned.jpg"
    jpeg.write_bytes(_jpeg_with_exif(_exif_orientation(6), pixels))  # 6: shown turned 90 degrees clockwise
    shown = np.rot90(pixels, k=-1)
    expected = np.asarray(Image.fromarray(np.ascontiguousarray(shown)).resize((32, 32), Image.Resampling.BOX))
    assert np.abs(decode(jpeg, 32).astype(int) - expected).max() <= 4  # JPEG at quality 100
    assert np.abs(decode(jpeg, 32).astype(int) - _decode_unturned(pixels, tmp_path)).max() > 100

    # a store written before orientation was applied holds the unturned array under the same digest
    cache = ImageCache(tmp_path / "cache", 32)
    digest = cache.index.lookup([str(jpeg)], lambda path, data: (64, 40))[0].digest
    old = ArrayStore(cache.folder, (32, 32))  # no content tag: as older versions wrote it
    old.append([digest], [_decode_unturned(pixels, tmp_path)])
    old.close()
    assert ArrayStore(cache.folder, (32, 32)).rows_for([digest]) == [0]
    fresh = ImageCache(tmp_path / "cache", 32)
    array, _ = fresh.load(jpeg)
    assert np.abs(array.astype(int) - expected).max() <= 4 and fresh.misses == 1
    assert ArrayStore(fresh.folder, (32, 32), content=DECODED).rows_for([digest]) == [0]  # rebuilt, refilled
    assert fresh.source_sizes([str(jpeg)]) == [(40, 64)]  # width x height as shown


def _decode_unturned(pixels: np.ndarray, tmp_path: Path) -> np.ndarray:
    png = tmp_path / "unturned.png"
    Image.fromarray(pixels).save(png)
    return decode(png, 32)


def test_file_index_entries_of_an_older_version_are_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(file_index, "RACY_NS", 0)
    image = tmp_path / "a.png"
    Image.fromarray(PIXELS.astype(np.uint8)).save(image)
    probe = lambda path, data: (1, 1)  # noqa: E731
    FileIndex(tmp_path / "cache").lookup([str(image)], probe)
    again = FileIndex(tmp_path / "cache")
    again.lookup([str(image)], probe)
    assert again.hashed == 0
    with sqlite3.connect(tmp_path / "cache" / "files.sqlite") as con:
        con.execute("PRAGMA user_version = 1")
    older = FileIndex(tmp_path / "cache")
    older.lookup([str(image)], probe)
    assert older.hashed == 1


# -- byte-identical copies -------------------------------------------------------------------------------
def _add_copy(data: Path, of: str, patient: str | None = None, label: str | None = None) -> None:
    """A row for a byte-identical copy of image `of`, under `patient` (default: the same one)."""
    (data / "covid" / "copy.png").write_bytes((data / of).read_bytes())

    def add(table: pd.DataFrame) -> None:
        row = table[table["path"] == of].iloc[0].to_dict()
        row.update(
            path="covid/copy.png", patient_id=patient or row["patient_id"], label=label or row["label"]
        )
        table.loc[len(table)] = row

    _edit_csv(data, add)


@pytest.mark.parametrize(
    "patient, label, expected",
    [
        ("covid-new", None, r"patient covid-0, label covid, \w+\) = covid/copy.png \(patient covid-new"),
        (
            None,
            "normal",
            r"covid/0.png \(patient covid-0, label covid, \w+\) = covid/copy.png \(patient covid-0, ",
        ),
    ],
)
def test_a_copy_under_another_patient_or_label_is_refused_naming_both_rows(
    tmp_path, patient, label, expected
):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    _add_copy(data, "covid/0.png", patient, label)
    with pytest.raises(UserError, match=r"1 image file\(s\) have a byte-identical copy") as raised:
        _datamodule(data, tmp_path).setup()
    assert pd.Series(str(raised.value)).str.contains(expected).all(), raised.value
    assert "give both rows the same patient_id and label" in str(raised.value)


def test_copies_spread_over_patients_and_splits_are_all_found(tmp_path):
    """The issue's case: 8 test images had a copy in train, filed under another patient id."""
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    _edit_csv(data, lambda t: t.__setitem__("patient_id", [f"p{i}" for i in range(len(t))]))
    for i in range(8):
        (data / "covid" / f"{i + 20}.png").write_bytes((data / "covid" / f"{i}.png").read_bytes())

    def add(table: pd.DataFrame) -> None:
        for i in range(8):
            table.loc[len(table)] = [f"covid/{i + 20}.png", "covid", f"copy{i}", "generated"]

    _edit_csv(data, add)
    with pytest.raises(UserError, match=r"8 image file\(s\) have a byte-identical copy"):
        _datamodule(data, tmp_path).setup()


def test_a_copy_of_the_same_patient_is_counted_and_logged(tmp_path, caplog):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    _add_copy(data, "covid/0.png")
    dm = _datamodule(data, tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.stats["n_duplicate_images"] == 1 and sum(dm.stats[f"n_{s}"] for s in SPLITS) == 41
    assert "1 image(s) are byte-identical copies" in _warnings(caplog) and "covid/copy.png" in _warnings(
        caplog
    )
    plain = make_dataset(tmp_path / "plain", {"normal": 20, "covid": 20})
    clean = _datamodule(plain, tmp_path)
    clean.setup()
    assert clean.stats["n_duplicate_images"] == 0


# -- lung masks ------------------------------------------------------------------------------------------
def _mask_set(root: Path, n: int = 10) -> Path:
    (root / "m").mkdir(parents=True)
    rows = []
    for i in range(n):
        image = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
        mask = np.zeros((30, 40), np.uint8)
        mask[5:25, 4:16] = 255
        Image.fromarray(image).save(root / "m" / f"i{i}.png")
        Image.fromarray(mask).save(root / "m" / f"m{i}.png")
        rows.append({"image": f"m/i{i}.png", "mask": f"m/m{i}.png"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def _mask_data(root: Path, **kw) -> LungMaskDataModule:
    return LungMaskDataModule(str(root), image_size=16, cache_dir=str(root / "cache"), **kw)


def test_a_mask_of_another_size_than_its_image_is_refused_naming_it(tmp_path):
    data = _mask_set(tmp_path)
    _mask_data(data).setup()  # same sizes: accepted
    Image.fromarray(np.kron(np.asarray(Image.open(data / "m" / "m4.png")), np.ones((2, 2), np.uint8))).save(
        data / "m" / "m4.png"
    )  # the same outline, at twice the size: it used to be resized silently
    with pytest.raises(
        UserError,
        match=r"1 mask\(s\) have another size than their image \(line 6: mask m/m4.png is 80x60 px, "
        r"image m/i4.png is 40x30 px\)\. Give each mask its image's exact size",
    ):
        _mask_data(data).setup()


def test_mask_messages_name_the_line_of_metadata_csv_also_for_a_subset(tmp_path):
    data = _mask_set(tmp_path)
    for i in range(4, 10):
        Image.fromarray(np.eye(31, 40, dtype=np.uint8) * 255).save(data / "m" / f"m{i}.png")
    with pytest.raises(UserError, match=r"mask\(s\) have another size") as raised:
        _mask_data(data, limit=5, seed=3).setup()  # 5 of the 10 rows: some of the last 6
    named = re.findall(r"line (\d+): mask m/m(\d+).png", str(raised.value))
    assert named and all(int(line) == int(row) + 2 for line, row in named)


@pytest.mark.parametrize("value", [0, 255])
def test_a_uniform_mask_is_refused_naming_its_line(tmp_path, value):
    data = _mask_set(tmp_path)
    Image.fromarray(np.full((30, 40), value, np.uint8)).save(data / "m" / "m7.png")
    with pytest.raises(
        UserError, match=rf"metadata.csv line 9: mask m/m7.png is empty or full.*every pixel is {value}"
    ):
        _mask_data(data).setup()


def test_a_bad_image_in_a_mask_set_names_its_line_not_a_data_option(tmp_path):
    data = _mask_set(tmp_path)
    write_dicom(data / "m" / "i2.png", PIXELS, window=(2000, 0))
    with pytest.raises(
        UserError, match=r"metadata.csv line 4: .*Window Width.*Replace the image or remove the row"
    ) as err:
        _mask_data(data).setup()
    assert "on_bad_image" not in str(err.value)  # the segmenter's data has no such option


# -- as a user sees it -----------------------------------------------------------------------------------
def test_training_on_a_dicom_with_window_width_0_exits_2_naming_it(tmp_path, cli_refused):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    _replace(data / "covid" / "5.png", lambda p: write_dicom(p, PIXELS, window=(2000, 0)))
    cli_refused(
        "covidseg-train",
        f"data.root={data}",
        "debug=fast",
        "data.image_size=32",
        f"hydra.run.dir={tmp_path}/run",
        expected=r"covid/5.png \(WindowCenter 2000.0, WindowWidth 0.0\): The \(0028,1051\) Window Width",
    )
