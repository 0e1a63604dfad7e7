"""Prediction tables (predictions.csv and its kind): their class columns, the checks every statistic runs on
them, and two tables of the same images put in one order so that they can be paired."""

from __future__ import annotations

import pandas as pd


def prob_columns(frame: pd.DataFrame) -> list[str]:
    """The prob_<class> columns of a prediction table, in class order."""
    return [c for c in frame.columns if str(c).startswith("prob_")]


def check_predictions(frame: pd.DataFrame, name: str = "predictions") -> None:
    """A prediction table has path, patient_id (and target with prob_ columns), lists every image once."""
    required = ("path", "patient_id", *(("target",) if prob_columns(frame) else ()))  # per-image scores: none
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {missing}; expected path, label, patient_id, target, prob_<class>..."
        )
    dup = frame["path"][frame["path"].duplicated()]
    if len(dup):
        raise ValueError(f"{name} lists {len(dup)} image(s) more than once, e.g. {dup.iloc[:3].tolist()}")


def align(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames ordered by path, after checking they describe the very same test images."""
    check_predictions(pred_a, "pred_a")
    check_predictions(pred_b, "pred_b")
    paths_a, paths_b = set(pred_a["path"]), set(pred_b["path"])
    if paths_a != paths_b:
        only_a = sorted(paths_a - paths_b)
        only_b = sorted(paths_b - paths_a)
        raise ValueError(
            "The two prediction tables do not list the same test images: "
            f"{len(only_a)} only in pred_a (e.g. {only_a[:3]}), {len(only_b)} only in pred_b (e.g. "
            f"{only_b[:3]}). Compare models evaluated on the same test split."
        )
    a = pred_a.sort_values("path", kind="stable").reset_index(drop=True)
    b = pred_b.sort_values("path", kind="stable").reset_index(drop=True)
    for col in ("target", "patient_id"):
        if not (a[col].to_numpy() == b[col].to_numpy()).all():
            bad = a["path"][a[col].to_numpy() != b[col].to_numpy()].iloc[:3].tolist()
            raise ValueError(f"The two prediction tables disagree on {col!r} for the same images, e.g. {bad}")
    if prob_columns(a) != prob_columns(b):
        raise ValueError(
            f"The two prediction tables have different class columns: {prob_columns(a)} vs {prob_columns(b)}"
        )
    return a, b
