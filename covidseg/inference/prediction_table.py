"""What covidseg-predict's tables hold for a reader besides the probabilities: the input CSV's own columns and
the DICOM identifiers in predictions.csv, and one row per patient (aggregate=patient).

Name clashes: covidseg's columns keep their names (scripts read them); an input column named like one of
them (e.g. `predicted`, `error`, or `AccessionNumber` beside the DICOM's) is kept as `input_<name>`, and
the log says so. No input column is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from covidseg.data.dicom import IDENTIFIERS, identifiers
from covidseg.errors import UserError
from covidseg.models.metrics import predicted_positive

log = logging.getLogger(__name__)

INPUT_PREFIX = "input_"
PATIENT_COLUMN = "patient_id"  # as in covidseg's metadata.csv
AGGREGATES = ("patient",)
AGGREGATE_BY = ("mean", "max")


def dicom_identifiers(files: Sequence[str], readable: Sequence[bool] | None = None) -> pd.DataFrame | None:
    """StudyInstanceUID, SOPInstanceUID and AccessionNumber of each file, read from the DICOM headers alone
    (covidseg.data.dicom.identifiers: no pixel data is read); empty for files that are no DICOM or lack the
    tag. None when no file has any of them (no columns to add).

    Args:
        files: the files, in the table's order.
        readable: per file, whether it was read as an image; the others (a FIFO, a folder, a broken link:
            their rows carry the error) are not opened again, so a FIFO cannot block. None: all.
    """
    readable = [True] * len(files) if readable is None else readable
    found = [identifiers(f) if ok else {} for f, ok in zip(files, readable, strict=True)]
    if not any(found):
        return None
    return pd.DataFrame([{name: ids.get(name, "") for name in IDENTIFIERS} for ids in found])


def _unclashed(name: str, taken: set[str]) -> str:
    while name in taken:
        name = INPUT_PREFIX + name
    taken.add(name)
    return name


def with_reader_columns(
    rows: pd.DataFrame, files: Sequence[str], inputs: pd.DataFrame | None
) -> pd.DataFrame:
    """predictions.csv: covidseg's rows, then the DICOM identifiers (when any file has them), then the input
    CSV's other columns in their order (a clash renamed to input_<name>, module docstring).

    Args:
        rows: covidseg's rows (path, prob_<class>..., predicted, threshold, [cam], error), in file order.
        files: the files predicted, in the same order.
        inputs: input_table's columns of the inputs CSV (same order), None without a CSV.
    """
    parts = [rows.reset_index(drop=True)]
    dicom = dicom_identifiers(files, list(parts[0]["error"].isna()) if "error" in parts[0] else None)
    if dicom is not None:
        parts.append(dicom)
    own = {column for part in parts for column in part.columns}
    if inputs is not None and len(inputs.columns):
        # a renamed column must take neither covidseg's names nor another input column's
        taken = own | set(inputs.columns)
        renamed = {c: _unclashed(c, taken) if c in own else c for c in inputs.columns}
        clashes = {c: new for c, new in renamed.items() if c != new}
        if clashes:
            log.warning(
                "Input column(s) named like covidseg's kept under other names in predictions.csv: %s",
                ", ".join(f"{c} -> {new}" for c, new in clashes.items()),
            )
        parts.append(inputs.reset_index(drop=True).rename(columns=renamed))
    return pd.concat(parts, axis=1)


def check_aggregate(aggregate: str | None, aggregate_by: str, inputs: pd.DataFrame | None, spec: str) -> None:
    """aggregate=patient needs an inputs CSV with a patient_id column filled on every line; refused before
    anything is predicted.

    Args:
        aggregate: the `aggregate` option (None or patient).
        aggregate_by: the `aggregate_by` option (mean or max).
        inputs: input_table's columns of the inputs CSV; None when inputs named images.
        spec: the `inputs` option, named in the messages.

    Raises:
        UserError: an unknown value, no CSV, no patient_id column, or lines without a patient.
    """
    if aggregate is None:
        return
    if aggregate not in AGGREGATES:
        raise UserError(f"aggregate must be null or one of {list(AGGREGATES)}, got {aggregate!r}.")
    if aggregate_by not in AGGREGATE_BY:
        raise UserError(
            f"aggregate_by must be one of {list(AGGREGATE_BY)}, got {aggregate_by!r}. "
            "Set e.g. aggregate_by=mean."
        )
    fix = f"Give inputs=<CSV with a path and a {PATIENT_COLUMN} column>, or drop aggregate=patient."
    if inputs is None:
        raise UserError(
            f"aggregate=patient needs to know each image's patient, but inputs={spec} is no CSV. {fix}"
        )
    if PATIENT_COLUMN not in inputs.columns:
        columns = ["path", *inputs.columns]
        raise UserError(
            f"aggregate=patient: inputs={spec} has no {PATIENT_COLUMN} column (it has {columns}). {fix}"
        )
    empty = [i + 2 for i, v in enumerate(inputs[PATIENT_COLUMN]) if not str(v).strip()]
    if empty:
        raise UserError(
            f"aggregate=patient: inputs={spec} line(s) {empty[:5]} have an empty {PATIENT_COLUMN}. Fill them."
        )


def patient_rows(
    rows: pd.DataFrame, patients: Sequence[str], class_names: list[str], how: str
) -> pd.DataFrame:
    """One row per patient: the mean or the max of its images' probabilities, named in the column.

    Two classes: prob_<positive>_<how> (the positive class, the last) and the predicted class by the rule
    the images had (p > `threshold`, the images' threshold column). More classes: prob_<class>_<how> for each
    and the class with the highest of them. Unreadable images (an `error`) count in n_unreadable only; a
    patient without a readable image gets no probability.

    Args:
        rows: predictions.csv's rows (prob_<class>..., threshold, error).
        patients: each row's patient, in order.
        class_names: the classifier's classes.
        how: mean or max (AGGREGATE_BY).

    Returns:
        patient_id, n_images, n_unreadable, the probabilities, predicted, threshold (and threshold_rule
        when the rows have it); patients in order of first appearance.
    """
    shown = class_names[-1:] if len(class_names) == 2 else class_names
    table = rows[[f"prob_{c}" for c in shown]].copy()
    table.columns = [f"prob_{c}_{how}" for c in shown]
    table.insert(0, PATIENT_COLUMN, [str(p).strip() for p in patients])
    readable = rows["error"].isna().to_numpy()
    table["n_images"], table["n_unreadable"] = readable.astype(int), (~readable).astype(int)
    grouped = table.groupby(PATIENT_COLUMN, sort=False)
    out = grouped[["n_images", "n_unreadable"]].sum()
    probs = grouped[[f"prob_{c}_{how}" for c in shown]].agg(how)  # NaN (unreadable) left out
    out = pd.concat([out, probs], axis=1).reset_index()
    values = probs.to_numpy(dtype=float)
    seen = ~np.isnan(values).any(axis=1)
    threshold = rows["threshold"].iloc[0] if len(rows) else None
    out["predicted"] = None
    if len(class_names) == 2:
        positive = predicted_positive(values[seen, 0], float(threshold))
        out.loc[seen, "predicted"] = [class_names[int(p)] for p in positive]
    else:
        out.loc[seen, "predicted"] = [class_names[i] for i in values[seen].argmax(axis=1)]
    out["threshold"] = threshold
    if "threshold_rule" in rows:  # how the threshold was chosen, as each image's row says
        out["threshold_rule"] = rows["threshold_rule"].iloc[0] if len(rows) else None
    return out
