"""A corpus of bad inputs: each gives a UserError naming the file/row/option and the fix, or a counted,
logged skip, and never leaves behind something a later run would trust (e.g. a cache entry)."""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from PIL import Image

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.images import MIN_SIDE, ImageCache
from covidseg.data.manifest import load_manifest, read_manifest
from covidseg.data.selection import select_classes, stratified_subset
from covidseg.data.split import SPLITS, check_classes_in_splits, split_by_patient
from covidseg.errors import UserError
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.runs.checks import check_config
from tests.conftest import make_dataset

register_resolvers()
RATIOS = {"train": 0.7, "test": 0.2, "val": 0.1}


def _datamodule(root: Path, tmp_path: Path, **kw) -> CXRDataModule:
    return CXRDataModule(root=str(root), image_size=16, cache_dir=str(tmp_path / "cache"), **kw)


def _edit_csv(root: Path, edit) -> None:
    table = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    edit(table)
    table.to_csv(root / "metadata.csv", index=False)


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# -- metadata.csv --------------------------------------------------------------------------------------
def _pad_covid_rows(table: pd.DataFrame) -> None:
    covid = table["label"] == "covid"
    table.loc[covid, "label"] = "covid "
    table.loc[covid, "patient_id"] = table.loc[covid, "patient_id"] + " "


def test_label_and_patient_whitespace_is_stripped_counted_and_logged(tmp_path, caplog):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    _edit_csv(data, _pad_covid_rows)
    with caplog.at_level(logging.WARNING):
        table, report = load_manifest(data)
    assert set(table["label"]) == {"normal", "covid"}
    assert table["patient_id"].str.strip().eq(table["patient_id"]).all()
    assert (report.stripped_labels, report.stripped_patient_ids) == (20, 20)
    assert "'covid ' -> 'covid'" in _warnings(caplog)
    dm = _datamodule(data, tmp_path)
    dm.setup()
    assert dm.stats["stripped_labels"] == 20 and dm.class_counts("train")[1] > 0


@pytest.mark.parametrize(
    "relabel, expected",
    [
        # every covid row mislabelled: both fixes are offered
        (
            lambda t: t["label"].where(t["label"] != "covid", "COVID"),
            r"metadata.csv: no image has label 'covid' .* 20 row\(s\) have label 'COVID'.*"
            r"Rename the label\(s\) 'COVID' to 'covid' in metadata.csv, or set data.classes=\[normal,COVID\]",
        ),
        # only some rows: changing data.classes would drop the others, so only the rename is offered
        (
            lambda t: t["label"].where(~t["path"].isin(["covid/0.png", "covid/1.png"]), "Covid"),
            r"metadata.csv: 2 row\(s\) have label 'Covid'; data.classes has 'covid' \(18 "
            r"row\(s\).*Rename the "
            r"label\(s\) 'Covid' to 'covid' in metadata.csv\.$",
        ),
    ],
)
def test_labels_differing_only_in_case_are_an_error_with_the_fix(tmp_path, relabel, expected):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    _edit_csv(data, lambda t: t.__setitem__("label", relabel(t)))
    with pytest.raises(UserError, match=expected):
        _datamodule(data, tmp_path).setup()
    # also with on_unknown_label=drop and in evaluation: never silently dropped
    with pytest.raises(UserError, match="case-sensitive"):
        _datamodule(data, tmp_path, evaluate_on="all", on_unknown_label="drop").setup()


def test_class_folder_differing_only_in_case_names_the_folder(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 4, "COVID": 4})
    (data / "metadata.csv").unlink()
    table, report = load_manifest(data)
    with pytest.raises(
        UserError,
        match=r"class folder 'COVID' holds 4 image\(s\).*"
        r"Rename the class folder\(s\) 'COVID' to 'covid', "
        r"or set data.classes=\[normal,COVID\]",
    ):
        select_classes(table, ["normal", "covid"], source=report.source)


@pytest.mark.parametrize(
    "row, second, shown",
    [
        ("covid/3.png", "covid/1.png", r"'covid/1.png' on lines 7, 9\. "),
        ("covid/3.png", "covid/./1.png", r"'covid/1.png' = 'covid/./1.png' on lines 7, 9\. "),
        (
            "normal/3.png",
            "normal/../covid/1.png",
            r"'normal/../covid/1.png' = 'covid/1.png' on lines 5, 7, conflicting labels \['covid', "
            r"'normal'\]",
        ),
    ],
)
def test_an_image_listed_twice_is_refused_naming_it(tmp_path, row, second, shown):
    data = make_dataset(tmp_path / "d", {"normal": 4, "covid": 4})  # lines 2-5 normal/0-3, 6-9 covid/0-3
    _edit_csv(data, lambda t: t.__setitem__("path", t["path"].replace(row, second)))
    with pytest.raises(UserError, match=r"metadata.csv: 1 image\(s\) are listed more than once: " + shown):
        read_manifest(data)


def test_relative_paths_must_stay_inside_the_folder_absolute_paths_are_accepted(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 4, "covid": 4})
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(outside)
    _edit_csv(data, lambda t: t.__setitem__("path", t["path"].replace("covid/3.png", "../outside.png")))
    with pytest.raises(
        UserError,
        match=r"metadata.csv: 1 relative path\(s\) point outside the dataset "
        r"folder .*line 9: '../outside.png'.*give absolute paths",
    ):
        read_manifest(data)
    _edit_csv(data, lambda t: t.__setitem__("path", t["path"].replace("../outside.png", str(outside))))
    table = read_manifest(data)
    assert str(outside) in set(table["file"])


CSV_CORPUS = {
    "empty file": (b"", r"metadata.csv is empty \(0 bytes\).*Write a header path,label,patient_id"),
    "header only": (b"path,label,patient_id\n", r"metadata.csv has a header but no rows. Add one row"),
    "unclosed quote": (b'path,label,patient_id\n"covid/0.png,covid,p\n', r"is not a valid CSV.*quote"),
    "extra field": (
        b"path,label,patient_id\ncovid/0.png,covid,p,x\ncovid/1.png,covid,p\n",
        r"metadata.csv is not a valid CSV: line 2 has 4 fields, the header has 3",
    ),
    "not utf-8": (b"path,label,patient_id\n\xff\xfe\x00covid,p\n", r"metadata.csv is not a UTF-8 text file"),
    "missing column": (b"file,label\ncovid/0.png,covid\n", r"lacks column\(s\) \['path', 'patient_id'\]"),
    "empty value": (b"path,label,patient_id\ncovid/0.png,,p\n", r"empty 'label' on line\(s\) 2. Fill it in"),
    "missing field": (b"path,label,patient_id\ncovid/0.png,covid\n", r"empty 'patient_id' on line\(s\) 2"),
}


@pytest.mark.parametrize("case", CSV_CORPUS)
def test_broken_metadata_csv_names_the_file_and_the_fix(tmp_path, case):
    content, expected = CSV_CORPUS[case]
    make_dataset(tmp_path, {"covid": 2})
    (tmp_path / "metadata.csv").write_bytes(content)
    with pytest.raises(UserError, match=expected):
        read_manifest(tmp_path)


def test_class_folders_count_and_name_unsupported_files_and_ignore_hidden_ones(tmp_path, caplog):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    (data / "metadata.csv").unlink()
    for name in ("covid/a.nii", "covid/b.NII", "normal/notes.txt"):
        (data / name).write_bytes(b"x")
    for name in ("covid/.DS_Store", "covid/._0.png", "normal/.ipynb_checkpoints/9.png"):
        (data / name).parent.mkdir(exist_ok=True)
        (data / name).write_bytes(b"x")  # unreadable, but hidden: must not even be looked at
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(data / "loose.png")
    with caplog.at_level(logging.WARNING):
        table, report = load_manifest(data)
    assert len(table) == 40
    assert report.unsupported_files == {".nii": 2, ".txt": 1} and report.files_outside_class_folders == 1
    warned = _warnings(caplog)
    assert "covid/a.nii" in warned and "{'.nii': 2, '.txt': 1}" in warned and "loose.png" in warned
    dm = _datamodule(data, tmp_path)
    dm.setup()
    assert dm.stats["unsupported_files"] == {".nii": 2, ".txt": 1} and dm.stats["n_unsupported_files"] == 3


def test_unknown_labels_dropped_are_a_warning_with_examples_and_counted(tmp_path, caplog):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20, "tb": 3})
    dm = _datamodule(data, tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.stats["dropped_labels"] == {"tb": 3}
    assert "left out 3 image(s)" in _warnings(caplog) and "tb/0.png" in _warnings(caplog)


# -- image files -----------------------------------------------------------------------------------------
def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height: PIL's bomb check runs on the header alone."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _cache_digests(cache_root: Path, size: int = 16) -> list[str]:
    """The digests that have a decoded array in the store of `size` px images."""
    index = cache_root / "arrays" / str(size) / "index.sqlite"
    if not index.exists():
        return []
    with sqlite3.connect(index) as con:
        return [digest for (digest,) in con.execute("SELECT digest FROM rows")]


BAD_IMAGES = {
    # name: (write the file, reason, message)
    "1x1": (
        lambda p: Image.fromarray(np.full((1, 1), 200, np.uint8)).save(p),
        "too_small",
        rf"is 1x1 px; covidseg needs at least {MIN_SIDE} px on each side",
    ),
    "31x500": (
        lambda p: Image.fromarray(np.zeros((500, 31), np.uint8)).save(p),
        "too_small",
        r"is 31x500 px",
    ),
    # above 2 x Image.MAX_IMAGE_PIXELS PIL raises DecompressionBombError ...
    "bomb error": (
        lambda p: _png_claiming(p, 20000, 20000),
        "too_large",
        r"too large to decode safely.*Downscale",
    ),
    # ... between 1x and 2x it only warns (DecompressionBombWarning), which covidseg refuses as well
    "bomb warning": (lambda p: _png_claiming(p, 10000, 10000), "too_large", r"too large to decode safely"),
    "not an image": (
        lambda p: p.write_bytes(b"not a png"),
        "unreadable",
        r"Cannot read image .*not in a format PIL can read",
    ),
    "truncated": (
        lambda p: p.write_bytes(_valid_png_bytes()[:60]),
        "unreadable",
        r"Cannot read image .*truncated",
    ),
}


def _valid_png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_is_an_error_or_a_counted_skip_and_never_cached(tmp_path, case, caplog):
    write, reason, message = BAD_IMAGES[case]
    bad = check_refused_or_skipped(tmp_path, write, reason, message, caplog)
    digest = hashlib.sha1(bad.read_bytes()).hexdigest()
    assert digest not in _cache_digests(tmp_path / "cache")


def check_refused_or_skipped(tmp_path: Path, write, reason: str, message: str, caplog) -> Path:
    """A data set of 40 images whose covid/3.png `write` replaces: a UserError matching `message` naming the
    file and the fix, then in skip mode a counted (`reason`), logged skip, with nothing cached for it."""
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    bad = data / "covid" / "3.png"
    bad.unlink()
    write(bad)
    with pytest.raises(UserError, match=message) as raised:
        _datamodule(data, tmp_path).setup()
    assert str(bad) in str(raised.value) and str(raised.value).endswith("set data.on_bad_image=skip.")
    dm = _datamodule(data, tmp_path, on_bad_image="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.stats["skipped_images"] == ["covid/3.png"] and dm.stats["n_skipped_images"] == 1
    assert dm.stats["skipped_image_reasons"] == {reason: 1}
    assert sum(dm.stats[f"n_{s}"] for s in SPLITS) == 39
    assert "covid/3.png" in _warnings(caplog) and "Skipped 1 of 40 image(s)" in _warnings(caplog)
    assert len(_cache_digests(tmp_path / "cache")) == 39
    assert not list((tmp_path / "cache").rglob("*.tmp*"))
    return bad


def test_an_entry_cached_before_the_size_check_is_not_trusted(tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).save(tiny)  # not blank
    ImageCache(tmp_path / "cache", 16).load(tiny)  # no minimum, as before this check existed
    assert len(_cache_digests(tmp_path / "cache")) == 1
    with pytest.raises(UserError, match=r"tiny.png is 4x4 px"):
        ImageCache(tmp_path / "cache", 16, min_side=MIN_SIDE).load(tiny)


def test_the_decompression_bomb_warning_stays_a_warning_outside_covidseg(tmp_path):
    """covidseg turns the warning into an error only while it decodes, not for the whole process."""
    path = _png_claiming(tmp_path / "big.png", 10000, 10000)
    with pytest.raises(UserError):
        ImageCache(tmp_path / "cache", 16).load(path)
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(path).close()


# -- splits ---------------------------------------------------------------------------------------------
def test_a_class_with_one_patient_is_refused_before_training(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 2})  # both covid images: patient covid-0
    with pytest.raises(
        UserError,
        match=r"class 'covid' has 1 patient\(s\) and no image in .*"
        r"patients per class: normal: 10, covid: 1.*larger data.limit",
    ):
        _datamodule(data, tmp_path).setup()
    # evaluation runs have no split: an external set may hold any number of patients per class
    dm = _datamodule(data, tmp_path, evaluate_on="all")
    dm.setup()
    assert dm.stats["n_test"] == 22


def test_a_split_file_missing_a_class_in_val_names_the_file(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    table = read_manifest(data)
    split = np.where(
        table["label"] == "covid",
        np.where(table["patient_id"] == "covid-0", "test", "train"),
        np.array(["train", "val", "test", "train"] * 5)[np.arange(len(table)) // 2 % 20],
    )
    table.assign(split=split)[["path", "split"]].to_csv(tmp_path / "splits.csv", index=False)
    with pytest.raises(UserError, match=r"class 'covid' has 10 patient\(s\) and no image in val.*splits.csv"):
        _datamodule(data, tmp_path, split_file=str(tmp_path / "splits.csv")).setup()


def test_a_class_with_three_patients_gets_one_in_every_split():
    # 3 covid patients of 2 images: the deficit rule alone gives train 2, test 1, val 0 for every seed
    rows = [(f"n{i}", "normal") for i in range(40)] + [(f"c{i // 2}", "covid") for i in range(6)]
    table = pd.DataFrame(rows, columns=["patient_id", "label"])
    for seed in range(5):
        splits = table.assign(split=split_by_patient(table, RATIOS, seed))
        check_classes_in_splits(splits, ["normal", "covid"], fix="")
        assert set(splits.loc[splits["label"] == "covid", "split"]) == set(SPLITS)


def test_a_subset_keeps_three_patients_of_a_small_class():
    rows = [(f"n{i}", "normal") for i in range(500)] + [(f"c{i // 5}", "covid") for i in range(100)]
    table = pd.DataFrame(rows, columns=["patient_id", "label"])
    subset = stratified_subset(table, 30, seed=0)  # covid's share is 5 images: one patient of five
    assert subset.loc[subset["label"] == "covid", "patient_id"].nunique() == 3


# -- config values ----------------------------------------------------------------------------------------
GOOD = {
    "data": {
        "image_size": 224,
        "batch_size": 32,
        "num_workers": 0,
        "limit": None,
        "split_file": None,
        "split_ratios": {"train": 0.7, "test": 0.2, "val": 0.1},
    },
    "trainer": {"max_epochs": 12},
    "model": {"optimizer": {"lr": 0.002}},
}

BAD_CONFIGS = [
    ("data.image_size=abc", r"data.image_size must be an integer >= 32, got 'abc'"),
    ("data.image_size=16", r"data.image_size must be an integer >= 32, got 16"),
    ("data.image_size=64.5", r"data.image_size must be an integer"),
    ("data.batch_size=0", r"data.batch_size must be an integer >= 1, got 0"),
    ("data.batch_size=true", r"data.batch_size must be an integer >= 1, got True"),
    ("data.num_workers=-1", r"data.num_workers must be an integer >= 0"),
    ("data.limit=0", r"data.limit must be null \(all images\) or an integer >= 1, got 0"),
    ("data.limit=many", r"data.limit must be null"),
    ("data.split_ratios.val=0", r"data.split_ratios gives no share to \['val'\]"),
    ("data.split_ratios.test=-0.2", r"data.split_ratios.test must be a number >= 0, got -0.2"),
    ("data.split_ratios.train=x", r"data.split_ratios.train must be a number"),
    ("+data.split_ratios.valid=0.1", r"data.split_ratios has unknown split\(s\) \['valid'\]"),
    ("data.split_ratios=0.7", r"data.split_ratios must be null or map train/val/test"),
    ("trainer.max_epochs=0", r"trainer.max_epochs must be an integer >= 1, got 0 .*untrained"),
    ("trainer.max_epochs=-1", r"trainer.max_epochs must be an integer >= 1, got -1"),
    ("model.optimizer.lr=0", r"model.optimizer.lr must be a number > 0, got 0"),
    ("model.optimizer.lr=abc", r"model.optimizer.lr must be a number > 0, got 'abc'"),
    ("data.image_size=${nowhere}", r"data.image_size: cannot resolve its value .*nowhere"),
    ("data.batch_size=${oc.env:COVIDSEG_SURELY_UNSET_VAR}", r"data.batch_size: cannot resolve its value"),
    ("+ckpt_path=???", r"ckpt_path has no value \(\?\?\? in the config\)"),
]


@pytest.mark.parametrize("override, expected", BAD_CONFIGS, ids=[o for o, _ in BAD_CONFIGS])
def test_bad_config_values_name_the_option_and_the_allowed_values(override, expected):
    cfg = OmegaConf.create(GOOD)
    key, value = override.lstrip("+").split("=", 1)
    OmegaConf.update(cfg, key, value if "${" in value or value == "???" else _parsed(value), force_add=True)
    with pytest.raises(UserError, match=expected):
        check_config(cfg)


def _parsed(value: str):
    """The value as Hydra's override parser would type it (int, float, bool, or string)."""
    return OmegaConf.create(f"v: {value}")["v"]


def test_good_configs_and_a_split_file_pass():
    check_config(OmegaConf.create(GOOD))
    check_config(OmegaConf.create({"data": {"batch_size": 64}}))  # eval: only some of the options
    uses_file = OmegaConf.merge(GOOD, {"data": {"split_file": "splits.csv", "split_ratios": {"val": 0}}})
    check_config(uses_file)  # ratios are not used with a split file


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("train", []),
        ("train", ["data=covid_cxr_3class", "debug=tiny"]),
        ("train", ["debug=fast"]),
        ("train", ["experiment=compare_quick"]),
        ("train_segmenter", []),
        ("eval", ["ckpt_path=x.ckpt"]),
        ("eval_segmenter", ["ckpt_path=x.ckpt"]),
        ("predict", ["ckpt_path=x.ckpt", "inputs=scans/"]),
    ],
)
def test_the_shipped_configs_pass(config, overrides, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)  # ${hydra:...} only resolves inside a Hydra run
        cfg.paths.log_dir = str(tmp_path)
    check_config(cfg)


# -- as a user sees it: exit code 2, the file named, no traceback (one subprocess each) ---------------------
def _keep_one_covid_patient(data: Path) -> None:
    gone = [f"covid/{i}.png" for i in range(2, 20)]
    for path in gone:
        (data / path).unlink()
    _edit_csv(data, lambda t: t.drop(t.index[t["path"].isin(gone)], inplace=True))


CLI_CASES = {
    "empty metadata.csv": (
        lambda d: (d / "metadata.csv").write_bytes(b""),
        r"metadata.csv is empty \(0 bytes\)",
    ),
    "one covid patient": (_keep_one_covid_patient, r"class 'covid' has 1 patient\(s\)"),
    "huge image": (lambda d: _png_claiming(d / "covid" / "5.png", 20000, 20000), r"covid/5.png is too large"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_exits_2_naming_the_problem(tmp_path, case, cli_refused):
    breaks, expected = CLI_CASES[case]
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    breaks(data)
    cli_refused(
        "covidseg-train",
        f"data.root={data}",
        "debug=fast",
        "logger=none",
        "data.image_size=32",
        f"hydra.run.dir={tmp_path}/run",
        expected=expected,
    )
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "splits.csv").exists()
