"""Which rows of a manifest a run uses: the labels of data.classes (checked), and small stratified subsets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from covidseg.data.manifest import EXAMPLES, load_manifest
from covidseg.errors import UserError

log = logging.getLogger(__name__)


def select_classes(
    table: pd.DataFrame,
    classes: Sequence[str],
    on_unknown_label: str = "drop",
    source: str = "",
    require_all: bool = True,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep rows whose label is in `classes` (in that order: index = position) and count the rest.

    Labels that differ from a class only in case ("COVID" vs "covid") are always an error: dropping them
    would lose a class silently.

    Args:
        table: the manifest (`label`, `path` columns).
        classes: data.classes, at least two distinct names.
        on_unknown_label: `drop` (count, warn, continue) or `error`.
        source: the data set's name in messages ('' -> "dataset").
        require_all: False (evaluation) accepts a data set without some of the classes, e.g. an external
            COVID-only set (but not one with none of them).

    Returns:
        The kept rows with a `target` column, and {label: count} of the rows left out.

    Raises:
        UserError: bad `classes` or `on_unknown_label`, a case mismatch, a missing class, or (with `error`)
            a label not in `classes`.
    """
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UserError(f"data.classes must name at least two distinct classes, got {classes}.")
    if on_unknown_label not in ("drop", "error"):
        raise UserError(f"data.on_unknown_label must be 'drop' or 'error', got {on_unknown_label!r}.")
    counts = table["label"].value_counts()
    _refuse_case_mismatches(counts, classes, source)
    absent = [c for c in classes if c not in counts.index]
    if absent and (require_all or len(absent) == len(classes)):
        raise UserError(
            f"{source or 'dataset'}: no image has label {absent}; labels present: {dict(counts)}. "
            "Fix data.classes (names are case-sensitive)."
        )
    unknown = table[~table["label"].isin(classes)]
    dropped = {str(k): int(v) for k, v in unknown["label"].value_counts().items()}
    if dropped:
        if on_unknown_label == "error":
            first = unknown.index[0]
            raise UserError(
                f"{source or 'dataset'}: {len(unknown)} row(s) have labels not in data.classes={classes}: "
                f"{dropped} (first: row {first}, {unknown.loc[first, 'path']}). Add them to data.classes or "
                "set data.on_unknown_label=drop."
            )
        log.warning(
            "%s: left out %d image(s) with labels not in data.classes=%s: %s, e.g. %s "
            "(data.on_unknown_label=drop; counted as dropped_labels in metrics.json)",
            source or "dataset",
            len(unknown),
            classes,
            dropped,
            list(unknown["path"][:EXAMPLES]),
        )
    kept = table[table["label"].isin(classes)].copy()
    kept["target"] = kept["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return kept.reset_index(drop=True), dropped


def _refuse_case_mismatches(counts: pd.Series, classes: list[str], source: str) -> None:
    """A UserError naming both fixes when labels match a class only if case is ignored."""
    by_fold = {c.casefold(): c for c in classes}
    mismatched = [
        (str(label), by_fold[str(label).casefold()], int(n))
        for label, n in counts.items()
        if label not in classes and str(label).casefold() in by_fold
    ]
    if not mismatched:
        return
    folder_mode = bool(source) and Path(source).is_dir()
    where = source or "metadata.csv"
    renamed = list(classes)
    parts = []
    for label, cls, n in mismatched:
        if folder_mode:
            parts.append(f"no image has label '{cls}', but the class folder '{label}' holds {n} image(s)")
        elif cls in counts.index:
            parts.append(
                f"{n} row(s) have label '{label}'; data.classes has '{cls}' "
                f"({int(counts[cls])} row(s) already use it)"
            )
        else:
            parts.append(f"no image has label '{cls}' of data.classes, but {n} row(s) have label '{label}'")
        if cls in renamed:
            renamed[renamed.index(cls)] = label
    fixes = [f"'{label}' to '{cls}'" for label, cls, _ in mismatched]
    rename = (
        f"Rename the class folder(s) {', '.join(fixes)}"
        if folder_mode
        else f"Rename the label(s) {', '.join(fixes)} in metadata.csv"
    )
    # Changing data.classes only helps when one spelling is used throughout.
    targets = [cls for _, cls, _ in mismatched]
    whole = len(set(targets)) == len(targets) and all(cls not in counts.index for cls in targets)
    other = f", or set data.classes=[{','.join(renamed)}]" if whole else ""
    raise UserError(f"{where}: {'; '.join(parts)} (labels are case-sensitive). {rename}{other}.")


def stratified_subset(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A subset of about n images with the class proportions of `table`, whole patients at a time.

    Whole patients keep the later patient-level split meaningful; every class keeps >= 3 patients
    where it has them, so that split_by_patient can give each of train/val/test every class.
    """
    if n <= 0 or n >= len(table):
        return table
    rng = np.random.default_rng(seed)
    picked = []
    for _, group in table.groupby("label", sort=True):
        want = max(3, round(n * len(group) / len(table)))
        patients = np.array(sorted(group["patient_id"].unique()), dtype=object)
        rng.shuffle(patients)
        sizes = group.groupby("patient_id").size()
        chosen, total = [], 0
        for p in patients:
            if total >= want and len(chosen) >= 3:
                break
            chosen.append(p)
            total += int(sizes[p])
        picked.append(group[group["patient_id"].isin(chosen)])
    return pd.concat(picked).sort_index().reset_index(drop=True)


def check_external_sets(
    folders: Sequence[Path], classes: Sequence[str], table: pd.DataFrame, root: Path
) -> None:
    """Each data.external folder is a data set with at least one of `classes`, is named uniquely (its folder
    name names its metrics) and shares no image file with the training data (`table`, read from `root`).

    Args:
        folders: the data.external folders, in config order.
        classes: data.classes.
        table: the training data set's manifest (`file` column).
        root: data.root, named in messages.

    Raises:
        UserError: a folder breaks one of these rules or cannot be read as a data set.
    """
    names: dict[str, Path] = {}
    own_files = set(table["file"])
    for i, folder in enumerate(folders):
        where = f"data.external[{i}] ({folder})"
        if folder.name in names:
            raise UserError(
                f"{where}: another external folder has the same name ({names[folder.name]}); results are "
                "keyed by folder name. Rename one of the folders."
            )
        names[folder.name] = folder
        try:
            external, _ = load_manifest(folder)
            select_classes(external, classes, "drop", source=str(folder), require_all=False)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        shared = own_files & set(external["file"])
        if shared:
            raise UserError(
                f"{where} shares {len(shared)} image file(s) with data.root {root}, e.g. "
                f"{sorted(shared)[:2]}: an external test set must not be training data. Remove it from "
                "data.external."
            )
