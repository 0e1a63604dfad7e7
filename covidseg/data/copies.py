"""Byte-identical image files under different paths, found from the content digests the image cache computes.

A copy of one X-ray under two patient ids is split as two patients: one copy can land in train and the
other in test, and the test score then includes images the model was trained on. So copies are refused
when their rows name different patients, labels or splits, and otherwise (one patient's file saved twice)
counted and logged: they only weigh that image twice.
"""

from __future__ import annotations

import logging

import pandas as pd

from covidseg.data.manifest import EXAMPLES
from covidseg.errors import UserError

log = logging.getLogger(__name__)

COPY_FIX = (
    "A file and its copy are one image of one patient: remove one of the rows (or the file), or give both "
    "rows the same patient_id and label."
)


def check_copies(table: pd.DataFrame, source: str) -> int:
    """Refuse byte-identical files (same `digest`) whose rows differ in patient_id, label or split.

    Args:
        table: rows with path, label, patient_id, split and digest (the file's SHA-1).
        source: the metadata.csv or folder the rows come from, named in messages.

    Returns:
        How many rows are a copy of an earlier row (same patient, label and split), also logged.
    """
    copies = table[table["digest"].duplicated(keep=False)]
    if copies.empty:
        return 0
    groups = [group for _, group in copies.groupby("digest", sort=False)]
    conflicting = [g for g in groups if any(g[c].nunique() > 1 for c in ("patient_id", "label", "split"))]
    if conflicting:
        shown = "; ".join(_described(g) for g in conflicting[:EXAMPLES])
        raise UserError(
            f"{source}: {len(conflicting)} image file(s) have a byte-identical copy under another patient, "
            f"label or split: {shown}. {COPY_FIX}"
        )
    count = len(copies) - len(groups)
    log.warning(
        "%s: %d image(s) are byte-identical copies of another image of the same patient (counted as "
        "n_duplicate_images), e.g. %s",
        source,
        count,
        _described(groups[0]),
    )
    return count


def _described(group: pd.DataFrame) -> str:
    return " = ".join(
        f"{row.path} (patient {row.patient_id}, label {row.label}, {row.split})" for row in group.itertuples()
    )
