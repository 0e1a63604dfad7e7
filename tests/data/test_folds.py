"""Patient-level K-fold cross-validation: the partition, the splits of each fold, and the refused inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.manifest import load_manifest
from covidseg.data.selection import select_classes
from covidseg.data.split import assign_folds, check_no_leakage, fold_by_patient
from covidseg.errors import UserError
from covidseg.runs.checks import check_config
from tests.conftest import make_dataset, read_metrics

RATIOS = {"train": 0.7, "test": 0.2, "val": 0.1}


def _table(patients: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """A manifest-like table: `n` patients per label with 1 to 5 images each."""
    rng = np.random.default_rng(seed)
    rows = [
        {"path": f"{label}/{p}-{i}.png", "label": label, "patient_id": f"{label}-{p}"}
        for label, n in patients.items()
        for p in range(n)
        for i in range(int(rng.integers(1, 6)))
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return _table({"normal": 160, "covid": 40})


def test_folds_partition_patients_stratified_by_label(table):
    folds = assign_folds(table, 5, seed=0)
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    assert table.assign(split=folds).groupby("patient_id")["split"].nunique().max() == 1
    overall = (table["label"] == "covid").mean()
    for k in range(5):
        rows = table[folds == k]
        # whole patients of up to 5 images: a fold's class mix and size stay close to the whole's
        assert abs((rows["label"] == "covid").mean() - overall) < 0.04, k
        assert abs(len(rows) / len(table) - 0.2) < 0.02, k


def test_folds_are_deterministic_per_seed_and_the_seed_changes_them(table):
    assert assign_folds(table, 5, seed=3).equals(assign_folds(table, 5, seed=3))
    assert not assign_folds(table, 5, seed=3).equals(assign_folds(table, 5, seed=4))
    assert fold_by_patient(table, 5, 2, RATIOS, seed=3).equals(fold_by_patient(table, 5, 2, RATIOS, seed=3))


def test_each_fold_tests_its_fold_and_carves_val_from_the_rest(table):
    folds = assign_folds(table, 5, seed=1)
    tested = pd.Series(0, index=table.index)
    for k in range(5):
        splits = fold_by_patient(table, 5, k, RATIOS, seed=1)
        assert ((splits == "test") == (folds == k)).all()
        tested += splits == "test"
        check_no_leakage(table.assign(split=splits))
        rest = table[splits != "test"]
        for _, group in rest.groupby("label"):
            val_share = (splits[group.index] == "val").mean()
            assert abs(val_share - 0.1 / 0.8) < 0.05, (k, val_share)
    assert (tested == 1).all()  # every image is tested exactly once over the K folds


def test_a_class_with_fewer_patients_than_folds_is_refused_naming_it():
    small = _table({"normal": 20, "covid": 4})
    with pytest.raises(UserError, match=r"data.folds=5 needs at least 5 patients.*'covid' has 4"):
        assign_folds(small, 5, seed=0)
    assign_folds(small, 4, seed=0)  # as many folds as patients: one covid patient per fold


@pytest.mark.parametrize(
    "folds, fold, expected",
    [
        (3, 3, r"data.fold must be an integer in 0..2 with data.folds=3, got 3"),
        (3, -1, r"data.fold must be an integer in 0..2"),
        (1, 0, r"data.folds must be null \(one train/val/test split\) or an integer >= 2, got 1"),
        ("five", 0, r"data.folds must be null .* got 'five'"),
    ],
)
def test_bad_fold_options_are_refused_by_the_config_check_and_the_data_module(folds, fold, expected):
    cfg = OmegaConf.create({"data": {"folds": folds, "fold": fold, "split_file": None}})
    with pytest.raises(UserError, match=expected):
        check_config(cfg)
    with pytest.raises(UserError, match=expected):
        CXRDataModule("unused", folds=folds, fold=fold)


def test_folds_with_a_split_file_is_refused_naming_both():
    cfg = OmegaConf.create({"data": {"folds": 5, "fold": 0, "split_file": "splits.csv"}})
    with pytest.raises(UserError, match=r"data.folds=5 and data.split_file=splits.csv both define"):
        check_config(cfg)


def test_folds_need_only_train_and_val_ratios():
    ratios = {"train": 0.8, "val": 0.1, "test": 0}
    check_config(OmegaConf.create({"data": {"folds": 5, "fold": 0, "split_ratios": ratios}}))
    with pytest.raises(UserError, match=r"no share to \['test'\]"):
        check_config(OmegaConf.create({"data": {"folds": None, "split_ratios": ratios}}))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("folds") / "d", {"normal": 72, "covid": 64})  # 36/32 patients


def _datamodule(dataset, tmp_path, **kwargs) -> CXRDataModule:
    dm = CXRDataModule(str(dataset), image_size=32, cache_dir=str(tmp_path / "cache"), **kwargs)
    dm.setup("fit")
    return dm


def test_the_data_module_tests_every_image_once_over_the_folds(dataset, tmp_path):
    tested = []
    for k in range(3):
        dm = _datamodule(dataset, tmp_path, folds=3, fold=k, seed=5)
        assert (dm.stats["folds"], dm.stats["fold"]) == (3, k)
        splits = dm.table.groupby("split")["patient_id"].apply(set)
        assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"])
        assert not splits["val"] & splits["test"]
        tested += list(dm.table.loc[dm.table["split"] == "test", "path"])
    assert sorted(tested) == sorted(load_manifest(dataset)[0]["path"])


def test_without_folds_or_when_evaluating_the_stats_say_null(dataset, tmp_path):
    dm = _datamodule(dataset, tmp_path)
    assert dm.stats["folds"] is None and dm.stats["fold"] is None
    dm = _datamodule(dataset, tmp_path, folds=3, fold=1, evaluate_on="all")
    assert dm.stats["folds"] is None and dm.stats["n_test"] == 136


def test_too_many_folds_for_the_data_stop_setup_naming_the_class(dataset, tmp_path):
    with pytest.raises(UserError, match=r"class 'covid' has 32"):
        _datamodule(dataset, tmp_path, folds=33, fold=0)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["data.folds=40"],
            r"data.folds=40 needs at least 40 patients of every class, but class 'covid' has 32",
        ),
        (["data.folds=3", "data.fold=3"], r"data.fold must be an integer in 0..2 with data.folds=3, got 3"),
    ],
)
def test_the_cli_stops_before_training_naming_the_option(dataset, tmp_path, overrides, expected, cli_refused):
    run = tmp_path / "run"
    cli_refused(
        "covidseg-train",
        f"data.root={dataset}",
        "debug=fast",
        "data.image_size=32",
        *overrides,
        f"hydra.run.dir={run}",
        expected=expected,
    )
    assert not (run / "metrics.json").exists()


def test_the_record_of_a_cross_validated_run_rebuilds_its_options():
    record = {"root": "x", "folds": 5, "fold": 3, "equalize": "clahe", "clahe_clip": 3.0, "_target_": "y"}
    dm = CXRDataModule.from_record(record)
    assert (dm.folds, dm.fold, dm.equalize, dm.clahe_clip) == (5, 3, "clahe", 3.0)


@pytest.mark.slow
def test_a_fold_run_records_its_fold_and_tests_exactly_that_fold(dataset, tmp_path, cli):
    run = tmp_path / "run"
    cli(
        "covidseg-train",
        f"data.root={dataset}",
        "debug=fast",
        "data.image_size=32",
        "data.folds=3",
        "data.fold=1",
        "seed=2",
        f"hydra.run.dir={run}",
    )
    metrics = read_metrics(run)
    assert (metrics["folds"], metrics["fold"]) == (3, 1)
    splits = pd.read_csv(run / "splits.csv")
    table, _ = select_classes(load_manifest(dataset)[0], ["normal", "covid"])
    expected = table.loc[assign_folds(table, 3, seed=2) == 1, "path"]
    assert sorted(splits.loc[splits["split"] == "test", "path"]) == sorted(expected)
