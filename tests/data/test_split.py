import pandas as pd
import pytest

from covidseg.data.manifest import read_manifest
from covidseg.data.selection import select_classes, stratified_subset
from covidseg.data.split import check_no_leakage, read_split_file, split_by_patient
from covidseg.errors import UserError

RATIOS = {"train": 0.7, "test": 0.2, "val": 0.1}


@pytest.fixture(scope="module")
def binary_table(covid_cxr):
    table, _ = select_classes(read_manifest(covid_cxr), ["normal", "covid"])
    return table


def test_split_is_patient_disjoint_stratified_and_respects_ratio(binary_table):
    table = binary_table.assign(split=split_by_patient(binary_table, RATIOS, seed=0))
    check_no_leakage(table)
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    for label, group in table.groupby("label"):
        shares = group["split"].value_counts(normalize=True)
        for split, want in RATIOS.items():
            # whole patients (up to 5 images each here) limit how close a share can get
            assert abs(shares[split] - want) < 0.04, (label, split, shares.to_dict())


def test_split_is_deterministic_and_seed_dependent(binary_table):
    a = split_by_patient(binary_table, RATIOS, seed=3)
    b = split_by_patient(binary_table, RATIOS, seed=3)
    c = split_by_patient(binary_table, RATIOS, seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_leakage_is_refused():
    table = pd.DataFrame({"patient_id": ["p1", "p1", "p2"], "split": ["train", "test", "val"]})
    with pytest.raises(UserError, match="p1"):
        check_no_leakage(table)


def test_user_split_file_is_used_and_validated(binary_table, tmp_path):
    given = binary_table[["path"]].assign(split=split_by_patient(binary_table, RATIOS, seed=9))
    given.iloc[:-1].to_csv(tmp_path / "splits.csv", index=False)  # last image unlisted -> unused
    splits = read_split_file(tmp_path / "splits.csv", binary_table)
    assert (splits.iloc[:-1] == given["split"].iloc[:-1]).all()
    assert splits.iloc[-1] == "unused"
    given.assign(split="holdout").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="train/val/test"):
        read_split_file(tmp_path / "bad.csv", binary_table)
    with pytest.raises(UserError, match="does not exist"):
        read_split_file(tmp_path / "nope.csv", binary_table)
    given.assign(path="elsewhere/" + given["path"]).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(UserError, match="lists none of the images"):
        read_split_file(tmp_path / "other.csv", binary_table)


def test_stratified_subset_keeps_proportions_and_whole_patients(binary_table):
    subset = stratified_subset(binary_table, 60, seed=0)
    assert 55 <= len(subset) <= 75
    covid_share = (subset["label"] == "covid").mean()
    assert abs(covid_share - (binary_table["label"] == "covid").mean()) < 0.06
    for patient, group in subset.groupby("patient_id"):
        assert len(group) == (binary_table["patient_id"] == patient).sum()
