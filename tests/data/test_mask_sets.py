"""Several lung mask sets at once (data.roots): per-set splits and checks, HD95, per-set and per-source
metrics.

Mask sets are generated here (make_mask_set: a few 32-48 px image/mask pairs); one slow test composes the
default config with the real lungs/ and lungs-covid/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image
from scipy import ndimage

from covidseg.data.mask_sets import mask_set_roots, set_name
from covidseg.data.segmentation import LungMaskDataModule
from covidseg.data.split import split_by_patient
from covidseg.errors import UserError
from covidseg.inference.evaluation import evaluate_segmenter_and_write
from covidseg.inference.segmenter_scores import summarize
from covidseg.models.segmenter import Segmenter, hausdorff95
from covidseg.paths import CONF_DIR, register_resolvers
from tests.conftest import read_metrics

register_resolvers()
RATIOS = {"train": 0.6, "val": 0.2, "test": 0.2}


def lung_mask(size: int, rng: np.random.Generator, value: int = 255) -> np.ndarray:
    """Two jittered rectangles (left and right lung) of `value` on 0."""
    mask = np.zeros((size, size), np.uint8)
    top, bottom = size // 8 + rng.integers(0, 3), size - size // 8 - rng.integers(0, 3)
    mask[top:bottom, size // 8 : size // 2 - 2] = value
    mask[top:bottom, size // 2 + 2 : size - size // 8] = value
    return mask


def make_mask_set(
    folder: Path,
    n: int = 12,
    size: int = 32,
    patients: bool = True,
    columns: dict[str, list[str]] | None = None,
    seed: int = 0,
) -> Path:
    """A generated mask set: images/<i>.png (noise, darker inside the lungs), masks/<i>.png (0/255), and
    metadata.csv image,mask[,patient_id (two images per patient)][,columns cycled over the rows]."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = []
    for i in range(n):
        mask = lung_mask(size, rng)
        image = rng.integers(100, 255, (size, size)).astype(np.uint8)
        image[mask > 0] //= 3
        Image.fromarray(image).save(folder / f"images/{i}.png")
        Image.fromarray(mask).save(folder / f"masks/{i}.png")
        row = {"image": f"images/{i}.png", "mask": f"masks/{i}.png"}
        if patients:
            row["patient_id"] = f"{folder.name}-{i // 2}"
        for column, values in (columns or {}).items():
            row[column] = values[i % len(values)]
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


def datamodule(tmp_path: Path, roots: list[Path], **kwargs) -> LungMaskDataModule:
    settings = {"image_size": 32, "split_ratios": RATIOS, "seed": 0, "cache_dir": str(tmp_path / "cache")}
    dm = LungMaskDataModule(roots=[str(r) for r in roots], **{**settings, **kwargs})
    dm.setup("fit")
    return dm


def compose_config(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


# -- which sets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["train_segmenter", "eval_segmenter"])
def test_default_is_both_sets_and_data_root_alone_still_means_one_set(config):
    default = compose_config(config, ["ckpt_path=x.ckpt"] if config == "eval_segmenter" else [])
    assert default.data.root is None
    assert [Path(r).name for r in default.data.roots] == ["lungs", "lungs-covid"]
    one = compose_config(config, ["data.root=/data/mine"])
    assert list(one.data.roots) == ["/data/mine"]
    several = compose_config(config, ["data.roots=[/a/x,/b/y]"])
    assert list(several.data.roots) == ["/a/x", "/b/y"] and several.data.root is None


def test_mask_set_roots_refuses_both_none_and_two_sets_of_one_name():
    assert mask_set_roots("/d/lungs", None) == [Path("/d/lungs")]
    assert mask_set_roots("/d/lungs", ["/d/lungs"]) == [Path("/d/lungs")]  # data.root=... as composed
    assert mask_set_roots(None, ["/d/a", "/d/b"]) == [Path("/d/a"), Path("/d/b")]
    assert mask_set_roots(None, "/d/a") == [Path("/d/a")]
    with pytest.raises(UserError, match=r"data.root=/d/c and data.roots=.* both given; give one"):
        mask_set_roots("/d/c", ["/d/a", "/d/b"])
    with pytest.raises(UserError, match="No mask set given"):
        mask_set_roots(None, [])
    with pytest.raises(UserError, match=r"names mask set\(s\) \['lungs'\] more than once"):
        mask_set_roots(None, ["/one/lungs", "/two/lungs"])
    assert set_name("/d/lungs-covid/") == "lungs-covid"


# -- splits ----------------------------------------------------------------------------------------------
def test_each_set_is_split_on_its_own_by_patient_or_by_image_with_a_warning(tmp_path, caplog):
    a = make_mask_set(tmp_path / "covidlike", n=20)
    b = make_mask_set(tmp_path / "plain", n=10, patients=False, seed=1)
    with caplog.at_level(logging.WARNING):
        dm = datamodule(tmp_path, [a, b])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Mask set plain has no patient_id" in w and "split by image" in w for w in warnings), warnings
    assert not any("covidlike" in w for w in warnings)
    table = dm.table
    assert list(table["set"].unique()) == ["covidlike", "plain"]
    sizes = dm.set_sizes()
    assert all(n > 0 for s in sizes.values() for n in s.values()), sizes
    assert sum(sizes["covidlike"].values()) == 20 and sum(sizes["plain"].values()) == 10
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 30
    covid = table[table["set"] == "covidlike"]
    assert (covid.groupby("patient_id")["split"].nunique() == 1).all()
    # each set's split is the one it gets alone: the same ratios and seed, not changed by the other set
    alone = split_by_patient(pd.read_csv(a / "metadata.csv").assign(label="lung"), RATIOS, 0)
    assert list(covid["split"]) == list(alone)
    plain = pd.read_csv(b / "metadata.csv")
    by_image = split_by_patient(plain.assign(patient_id=plain["image"], label="lung"), RATIOS, 0)
    assert list(table.loc[table["set"] == "plain", "split"]) == list(by_image)
    # the datasets' rows follow the table: a test mask is the test row's own mask file, thresholded
    test = table[table["split"] == "test"].reset_index(drop=True)
    last = len(test) - 1
    with Image.open(test.loc[last, "mask_file"]) as mask:
        np.testing.assert_array_equal(dm.datasets["test"].targets[last], np.asarray(mask) > 127)


def test_limit_takes_at_most_that_many_pairs_of_each_set(tmp_path):
    a = make_mask_set(tmp_path / "a", n=16)
    b = make_mask_set(tmp_path / "b", n=10, seed=1)
    dm = datamodule(tmp_path, [a, b], limit=8)
    assert {k: sum(v.values()) for k, v in dm.set_sizes().items()} == {"a": 8, "b": 8}


# -- bad input, in whichever set it is ---------------------------------------------------------------------
def _write_mask(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path)


def _remove_mask(folder: Path) -> str:
    (folder / "masks/3.png").unlink()
    return r"do not exist, e.g. \[.*masks/3.png"


def _grey_edges(folder: Path) -> str:
    mask = lung_mask(32, np.random.default_rng(0))
    mask[ndimage.binary_dilation(mask > 0) & (mask == 0)] = 128  # an anti-aliased export
    _write_mask(folder / "masks/5.png", mask)
    return r"1 mask\(s\) are not binary \(line 7: .*masks/5.png has 3 values \(0, 128, 255\)\)"


def _two_lung_values(folder: Path) -> str:
    mask = lung_mask(32, np.random.default_rng(0))
    mask[:, :16] //= 2  # left lung 127, right lung 255
    _write_mask(folder / "masks/2.png", mask)
    return r"masks/2.png has 3 values \(0, 127, 255\).*threshold it"


def _empty_mask(folder: Path) -> str:
    _write_mask(folder / "masks/4.png", np.zeros((32, 32)))
    return r"second/metadata.csv line 6: mask masks/4.png is empty or full, one value everywhere"


def _blank_patient(folder: Path) -> str:
    table = pd.read_csv(folder / "metadata.csv", dtype=str)
    table.loc[6, "patient_id"] = ""
    table.to_csv(folder / "metadata.csv", index=False)
    return r"second/metadata.csv: 1 row\(s\) have an empty patient_id \(lines \[8\]\)"


BAD_SETS = {
    "mask missing": _remove_mask,
    "mask not binary (grey edges)": _grey_edges,
    "mask not binary (two lung values)": _two_lung_values,
    "mask empty": _empty_mask,
    "patient_id empty": _blank_patient,
}


@pytest.mark.parametrize("case", BAD_SETS)
def test_bad_second_set_stops_naming_the_file(tmp_path, case):
    good = make_mask_set(tmp_path / "first")
    bad = make_mask_set(tmp_path / "second", seed=1)
    expected = BAD_SETS[case](bad)
    with pytest.raises(UserError, match=expected):
        datamodule(tmp_path, [good, bad])


def test_mask_of_another_size_in_the_second_set_stops_naming_the_file(tmp_path):
    good = make_mask_set(tmp_path / "first")
    bad = make_mask_set(tmp_path / "second", seed=1)
    _write_mask(bad / "masks/1.png", lung_mask(40, np.random.default_rng(0)))  # its image is 32 px
    with pytest.raises(UserError, match=r"another size than their image.*masks/1.png"):
        datamodule(tmp_path, [good, bad])


def test_binary_is_judged_on_the_file_not_the_resized_mask(tmp_path):
    """Resizing blurs every mask's edge: a 0/255 mask of another size than image_size, or a 0/1 mask,
    is binary and accepted; only grey values in the file itself are the user's."""
    folder = make_mask_set(tmp_path / "big", n=10, size=48)  # 48 px to 32 px: box-filtered edges
    _write_mask(folder / "masks/0.png", lung_mask(48, np.random.default_rng(3), value=1))
    dm = datamodule(tmp_path, [folder], evaluate_all=True)
    masks = np.asarray(dm.datasets["test"].targets)
    assert set(np.unique(masks)) == {0, 1} and masks[0].sum() > 0


# -- HD95 --------------------------------------------------------------------------------------------------
def _brute_hd95(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric 95 % Hausdorff distance between the boundary pixels (mask minus its erosion) of a and b."""
    edges = [np.argwhere(m & ~ndimage.binary_erosion(m)) for m in (a.astype(bool), b.astype(bool))]
    d = np.linalg.norm(edges[0][:, None, :] - edges[1][None, :, :], axis=2)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hd95_matches_its_definition_and_defines_empty_masks():
    rng = np.random.default_rng(0)
    truth = lung_mask(40, rng)[None] > 0
    shifted = np.roll(truth, 3, axis=2)
    blob = ndimage.binary_dilation(truth, iterations=2) & (rng.random(truth.shape) > 0.1)
    empty = np.zeros_like(truth)
    preds = np.concatenate([truth, shifted, blob, empty, empty])
    truths = np.concatenate([truth, truth, truth, truth, empty])
    out = hausdorff95(preds, truths)
    assert out[0] == 0.0 and out[1] == pytest.approx(3.0)
    assert out[2] == pytest.approx(_brute_hd95(blob[0], truth[0]))
    assert out[3] == pytest.approx(np.hypot(40, 40))  # empty prediction: the image diagonal
    assert out[4] == 0.0  # nothing to find and nothing found
    assert np.isfinite(out).all()


def test_summaries_per_set_and_per_source_or_finding():
    rows = pd.DataFrame(
        {
            "set": ["normal", "normal", "covid", "covid", "covid"],
            "source": [np.nan, np.nan, "site-a", "site-b", "site-b"],
            "finding": [np.nan, np.nan, "COVID-19", "COVID-19", ""],
            "dice": [0.9, 0.8, 0.5, 0.7, 0.6],
            "iou": [0.8, 0.7, 0.4, 0.6, 0.5],
            "hd95": [1.0, 3.0, 10.0, 20.0, 30.0],
            "empty_prediction": [False, False, False, False, True],
        }
    )
    m = summarize(rows)
    assert m["test/dice"] == pytest.approx(0.7) and m["test/hd95"] == pytest.approx(12.8)
    assert m["test/empty_predictions"] == 1 and "test/n" not in m
    assert m["test/normal/dice"] == pytest.approx(0.85) and m["test/normal/n"] == 2
    assert m["test/covid/iou"] == pytest.approx(0.5) and m["test/covid/hd95"] == pytest.approx(20.0)
    assert m["test/source/site-b/dice"] == pytest.approx(0.65) and m["test/source/site-b/n"] == 2
    assert m["test/source/site-b/empty_predictions"] == 1 and m["test/source/site-a/n"] == 1
    assert m["test/finding/COVID-19/n"] == 2  # empty cells and sets without the column are in no group
    assert not any(k.startswith(("test/source/nan", "test/finding//")) for k in m)


# -- the entry points ----------------------------------------------------------------------------------------
SMALL_ENCODER = "tu-mobilenetv3_small_050"  # 2.2 M parameters with its U-Net: quick, and real


def two_sets(tmp_path: Path) -> tuple[Path, Path]:
    normal = make_mask_set(tmp_path / "normal", n=10, patients=False)
    covid = make_mask_set(
        tmp_path / "covid", n=12, columns={"source": ["site-a", "site-b"], "finding": ["COVID-19"]}, seed=1
    )
    return normal, covid


def test_test_segmenter_writes_scores_per_set_and_per_source(tmp_path):
    normal, covid = two_sets(tmp_path)
    dm = datamodule(tmp_path, [normal, covid], batch_size=4, num_workers=0)
    model = Segmenter(encoder=SMALL_ENCODER, image_size=32)  # untrained: the bookkeeping is under test
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    metrics = evaluate_segmenter_and_write(trainer, model, dm, tmp_path, None, overlays=2, extra={"seed": 0})
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    sizes = dm.set_sizes()
    assert metrics["set_sizes"] == sizes
    assert metrics["n_test"] == sizes["normal"]["test"] + sizes["covid"]["test"]
    scores = pd.read_csv(tmp_path / "segmentation_scores.csv")
    assert len(scores) == metrics["n_test"]
    assert {"set", "image", "mask", "patient_id", "source", "finding", "dice", "iou", "hd95"} <= set(scores)
    for name in ("normal", "covid"):
        group = scores[scores["set"] == name]
        assert metrics[f"test/{name}/n"] == sizes[name]["test"] == len(group)
        assert metrics[f"test/{name}/hd95"] == pytest.approx(group["hd95"].mean())
    assert metrics["test/dice"] == pytest.approx(scores["dice"].mean())
    assert metrics["test/empty_predictions"] == int(scores["empty_prediction"].sum())
    covid_test = scores[scores["set"] == "covid"]
    for site, group in covid_test.groupby("source"):
        assert metrics[f"test/source/{site}/n"] == len(group)
        assert metrics[f"test/source/{site}/iou"] == pytest.approx(group["iou"].mean())
    assert metrics["test/finding/COVID-19/n"] == len(covid_test)
    assert (tmp_path / "overlays.png").is_file()


@pytest.mark.slow
def test_train_and_eval_segmenter_write_per_set_and_per_source_metrics(tmp_path, cli):
    normal, covid = two_sets(tmp_path)
    run = tmp_path / "train"
    cli(
        "covidseg-train-segmenter",
        f"data.roots=[{normal},{covid}]",
        "trainer.max_epochs=1",
        "data.batch_size=4",
        "data.image_size=32",
        f"segmenter.encoder={SMALL_ENCODER}",
        "logger=none",
        "overlays=2",
        f"hydra.run.dir={run}",
    )
    metrics = read_metrics(run)
    for key in ["test/dice", "test/iou", "test/hd95", "test/empty_predictions"]:
        assert key in metrics, key
    for name in ("normal", "covid"):
        assert 0 <= metrics[f"test/{name}/dice"] <= 1 and metrics[f"test/{name}/hd95"] >= 0
        assert metrics[f"test/{name}/n"] == metrics["set_sizes"][name]["test"] > 0
    assert sum(s["train"] for s in metrics["set_sizes"].values()) == metrics["n_train"]
    assert metrics["sets"] == {"normal": str(normal), "covid": str(covid)}
    scores = pd.read_csv(run / "segmentation_scores.csv")
    assert len(scores) == metrics["n_test"] and {"set", "image", "dice", "iou", "hd95"} <= set(scores.columns)
    assert scores["dice"].mean() == pytest.approx(metrics["test/dice"])

    out = tmp_path / "eval"
    cli(
        "covidseg-eval-segmenter",
        f"ckpt_path={run}/checkpoints/best.ckpt",
        f"data.root={covid}",
        "overlays=2",
        f"hydra.run.dir={out}",
    )
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["n_test"] == 12 and evaluated["data_root"] == str(covid)
    assert evaluated["test/source/site-a/n"] == evaluated["test/source/site-b/n"] == 6
    assert evaluated["test/finding/COVID-19/n"] == 12 and evaluated["test/covid/n"] == 12
    per_image = pd.read_csv(out / "segmentation_scores.csv")
    assert list(per_image["source"].value_counts().sort_index()) == [6, 6]
    assert {"patient_id", "finding", "hd95"} <= set(per_image.columns)


def test_data_root_and_data_roots_together_are_refused(tmp_path, cli_refused):
    cli_refused(
        "covidseg-train-segmenter",
        f"data.root={tmp_path}/one",
        f"data.roots=[{tmp_path}/a,{tmp_path}/b]",
        "logger=none",
        f"hydra.run.dir={tmp_path}/run",
        expected=r"data.root=.*/one and data.roots=.* both given; give one",
    )


# -- the real sets ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_config_reads_both_real_mask_sets(tmp_path, lungs, caplog):
    cfg = compose_config("train_segmenter", ["data.limit=12", "data.image_size=64"])
    cfg.data.cache_dir = str(tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        dm = instantiate(cfg.data)
        dm.setup("fit")
    sizes = dm.set_sizes()
    assert list(sizes) == ["lungs", "lungs-covid"], sizes
    assert all(sum(s.values()) == 12 and s["train"] > 0 and s["test"] > 0 for s in sizes.values()), sizes
    covid = dm.table[dm.table["set"] == "lungs-covid"]
    assert (covid.groupby("patient_id")["split"].nunique() == 1).all()  # lungs-covid has patient_id
    assert any("Mask set lungs has no patient_id" in r.getMessage() for r in caplog.records)
