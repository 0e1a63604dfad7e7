"""Patient-level, label-stratified train/val/test splits (one split, or K cross-validation folds), and
the leakage check every run passes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from covidseg.errors import UserError
from covidseg.outputs import read_csv, write_csv

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# The study's 7:2:1 (train:test:val), by patient.
DEFAULT_SPLIT_RATIOS = {"train": 0.7, "test": 0.2, "val": 0.1}


def split_by_patient(table: pd.DataFrame, ratios: Mapping[str, float], seed: int) -> pd.Series:
    """Assign every row to train/val/test so that no patient spans two splits.

    Patients are grouped by their (most frequent) label; within each label they are shuffled with
    `seed` and dealt, largest image count first, to the split furthest below its share of that
    label's images. A label with at least one patient per split (of non-zero share) then gets one in
    each: a split left without it takes the smallest patient of the split holding most of them.
    Deterministic for a given table and seed.
    """
    shares = _normalised(ratios)
    rng = np.random.default_rng(seed)
    per_patient = _patient_labels(table)
    sizes = table.groupby("patient_id").size()
    assignment: dict[str, str] = {}
    for label in sorted(per_patient.unique()):
        patients = np.array(sorted(per_patient.index[per_patient == label]))
        rng.shuffle(patients)
        # Stable sort by size keeps the shuffled order among equals, so big patients are placed first.
        patients = sorted(patients, key=lambda p: -int(sizes[p]))
        total = int(sizes[patients].sum())
        filled = {s: 0 for s in SPLITS}
        for p in patients:
            # Deficit relative to target: the split that is most behind its share gets the patient.
            split = max(SPLITS, key=lambda s: (shares[s] * total - filled[s], shares[s]))
            assignment[p] = split
            filled[split] += int(sizes[p])
        _give_every_split_a_patient(patients, assignment, sizes, shares)
    return table["patient_id"].map(assignment).rename("split")


def _patient_labels(table: pd.DataFrame) -> pd.Series:
    """Each patient's most frequent label (ties: the one seen first): what splits and folds are stratified by.

    Vectorised (a per-patient value_counts cost ~1 ms per patient, most of a warm set-up)."""
    counts = table.groupby(["patient_id", "label"], sort=False).size().reset_index(name="n")
    first = counts.sort_values("n", ascending=False, kind="stable").drop_duplicates("patient_id")
    return first.set_index("patient_id")["label"].sort_index()


def check_folds(folds: int | None, fold: int | None) -> None:
    """data.folds (null, or K >= 2) and data.fold (0..K-1); covidseg.runs.checks runs this on configs."""
    if folds is None:
        return
    if not _is_int(folds) or folds < 2:
        raise UserError(
            f"data.folds must be null (one train/val/test split) or an integer >= 2, got {folds!r}. "
            "Set e.g. data.folds=5."
        )
    if not _is_int(fold) or not 0 <= fold < folds:
        raise UserError(
            f"data.fold must be an integer in 0..{folds - 1} with data.folds={folds}, got {fold!r}. "
            f"Set e.g. data.fold=0 (sweep data.fold={','.join(map(str, range(folds)))})."
        )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def assign_folds(table: pd.DataFrame, folds: int, seed: int) -> pd.Series:
    """Fold index (0..folds-1) of every row: patients dealt into `folds` folds, stratified by label.

    Within each label, patients are shuffled with `seed` and dealt, largest image count first, to the
    fold holding fewest images of that label so far, so every fold gets a patient of each label while
    it has enough patients, and image counts stay close. Deterministic for a given table and seed.
    A label with fewer patients than folds is refused: some test fold would lack that class.
    """
    check_folds(folds, 0)
    rng = np.random.default_rng(seed)
    per_patient = _patient_labels(table)
    sizes = table.groupby("patient_id").size()
    counts = per_patient.value_counts()
    if counts.min() < folds:
        label = counts.idxmin()
        raise UserError(
            f"data.folds={folds} needs at least {folds} patients of every class, but class '{label}' has "
            f"{int(counts.min())}. Set data.folds <= {int(counts.min())}, or use more data (data.limit)."
        )
    assignment: dict[str, int] = {}
    for label in sorted(per_patient.unique()):
        patients = np.array(sorted(per_patient.index[per_patient == label]))
        rng.shuffle(patients)
        patients = sorted(patients, key=lambda p: -int(sizes[p]))  # stable: ties keep the shuffled order
        order = rng.permutation(folds)  # which fold wins a tie, so fold 0 is not always the fullest
        filled = np.zeros(folds, dtype=int)
        for p in patients:
            fold = int(min(order, key=lambda f: filled[f]))
            assignment[p] = fold
            filled[fold] += int(sizes[p])
    return table["patient_id"].map(assignment).rename("fold")


def fold_by_patient(
    table: pd.DataFrame, folds: int, fold: int, ratios: Mapping[str, float], seed: int
) -> pd.Series:
    """train/val/test of cross-validation fold `fold` of `folds` (assign_folds with `seed`).

    test = that fold; val = patients of the other folds, stratified by label, for a share of their
    images of val / (train + val) of `ratios` (ratios' test share is not used); train = the rest.

    Args:
        table: the manifest (`patient_id`, `label` columns).
        folds: data.folds, the number of folds.
        fold: data.fold, the fold held out as test (0-based).
        ratios: data.split_ratios; its train and val shares must be > 0.
        seed: the seed of the folds and of the inner train/val split.

    Returns:
        The split of each row, aligned with `table`.

    Raises:
        UserError: `fold` is not a fold of `folds`, or a train or val share is 0.
    """
    check_folds(folds, fold)
    shares = _normalised(ratios)
    if shares["train"] <= 0 or shares["val"] <= 0:
        raise UserError(
            f"data.split_ratios needs train and val shares > 0 with data.folds, got {dict(ratios)}."
        )
    in_test = (assign_folds(table, folds, seed) == fold).to_numpy()
    rest = table[~in_test]
    splits = pd.Series("test", index=table.index, name="split")
    inner = {"train": shares["train"], "val": shares["val"], "test": 0.0}
    splits.loc[rest.index] = split_by_patient(rest, inner, seed)
    return splits


def _give_every_split_a_patient(
    patients: list[str], assignment: dict[str, str], sizes: pd.Series, shares: Mapping[str, float]
) -> None:
    """Small classes: the deficit rule can leave val (10%) without any patient of a label with 3 patients."""
    wanted = [s for s in SPLITS if shares[s] > 0]
    if len(patients) < len(wanted):
        return  # not enough patients; check_classes_in_splits says so for training runs
    for split in wanted:
        members = {s: [p for p in patients if assignment[p] == s] for s in wanted}
        if members[split]:
            continue
        donor = max(wanted, key=lambda s: len(members[s]))
        smallest = min(members[donor], key=lambda p: int(sizes[p]))
        assignment[smallest] = split


def _normalised(ratios: Mapping[str, float]) -> dict[str, float]:
    unknown = set(ratios) - set(SPLITS)
    if unknown or any(float(ratios.get(s, 0)) < 0 for s in SPLITS) or sum(ratios.values()) <= 0:
        raise UserError(
            f"data.split_ratios must give non-negative train/val/test shares, got {dict(ratios)}."
        )
    total = float(sum(ratios.values()))
    return {s: float(ratios.get(s, 0)) / total for s in SPLITS}


def check_no_leakage(table: pd.DataFrame) -> None:
    """Refuse a split in which any patient appears in more than one split."""
    spans = table.groupby("patient_id")["split"].nunique()
    leaked = spans[spans > 1]
    if len(leaked):
        examples = {
            p: sorted(table.loc[table["patient_id"] == p, "split"].unique()) for p in leaked.index[:3]
        }
        raise UserError(
            f"Patient leakage: {len(leaked)} patient(s) appear in more than one split, e.g. {examples}. "
            "Images of one patient must all be in the same split; fix the split file or let covidseg split."
        )


def check_classes_in_splits(table: pd.DataFrame, classes: Sequence[str], fix: str) -> None:
    """Training needs every class in train, val and test; else metrics such as test/auroc are meaningless.

    `table` has label, patient_id and split; `fix` is appended to the message (what the user can change).
    """
    images = table.groupby(["label", "split"]).size()
    patients = table.groupby("label")["patient_id"].nunique()
    gaps = {c: [s for s in SPLITS if int(images.get((c, s), 0)) == 0] for c in classes}
    gaps = {c: splits for c, splits in gaps.items() if splits}
    if not gaps:
        return
    found = "; ".join(
        f"class '{c}' has {int(patients.get(c, 0))} patient(s) and no image in {'/'.join(splits)}"
        for c, splits in gaps.items()
    )
    per_class = ", ".join(f"{c}: {int(patients.get(c, 0))}" for c in classes)
    raise UserError(
        f"Every class needs images in train, val and test, but {found} "
        f"(patients per class: {per_class}). {fix}"
    )


def read_split_file(path: str | Path, table: pd.DataFrame) -> pd.Series:
    """Splits from a user's CSV with columns `path,split` (paths as in the dataset's metadata).

    Images the file does not list get split "unused" (logged); rows naming unknown images are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"Split file {path} does not exist. Give data.split_file=<csv with path,split> or null."
        )
    given = read_csv(path, dtype=str, keep_default_na=False)
    if not {"path", "split"} <= set(given.columns):
        raise UserError(f"{path} needs columns path,split; it has {list(given.columns)}.")
    bad = sorted(set(given["split"]) - set(SPLITS))
    if bad:
        raise UserError(f"{path}: split values must be train/val/test, found {bad}.")
    duplicated = given["path"][given["path"].duplicated()]
    if len(duplicated):
        raise UserError(f"{path}: path(s) listed twice, e.g. {list(duplicated[:3])}. List each image once.")
    mapping = dict(zip(given["path"], given["split"]))
    if not set(mapping) & set(table["path"]):
        raise UserError(
            f"{path} lists none of the images of the dataset (e.g. {list(table['path'][:2])}); "
            "its paths must be written as in the dataset's metadata.csv."
        )
    unlisted = [p for p in table["path"] if p not in mapping]
    if unlisted:
        log.warning(
            "%s gives no split for %d image(s) of the dataset (not used), e.g. %s",
            path,
            len(unlisted),
            unlisted[:3],
        )
    return table["path"].map(mapping).fillna("unused").rename("split")


def write_splits(table: pd.DataFrame, path: str | Path) -> None:
    """The run's `splits.csv`: one row per image with its split (re-usable as data.split_file)."""
    columns = ["path", "label", "patient_id", "split"]
    write_csv(table[columns], path)
