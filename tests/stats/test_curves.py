"""covidseg.stats.curves: ROC and PR curves on a grid, by hand, against the AUROC, under image weights and
with the pooled patient-bootstrap band."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidseg import stats
from covidseg.stats.curves import bootstrap_curve, curve_scorer


def table(y, p, patients=None) -> pd.DataFrame:
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    return pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(len(y))],
            "patient_id": patients if patients is not None else [f"p{i}" for i in range(len(y))],
            "target": y,
            "prob_normal": 1 - p,
            "prob_covid": p,
        }
    )


def curve(frame: pd.DataFrame, kind: str, grid) -> np.ndarray:
    return curve_scorer(frame, kind, np.asarray(grid, dtype=float))(np.ones((1, len(frame))))[0]


def test_roc_and_pr_by_hand():
    # Points of the ROC: (0, 0), (0, .5), (.5, .5), (.5, 1), (1, 1)
    frame = table([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    assert curve(frame, "roc", [0, 0.25, 0.5, 0.75, 1]) == pytest.approx([0.5, 0.5, 1, 1, 1])
    # precision at recall .5: 1 (first cut); at recall 1: 2/3 (0.9 and 0.4 positive, 0.6 a false positive)
    assert curve(frame, "pr", [0, 0.5, 0.6, 1]) == pytest.approx([1, 1, 2 / 3, 2 / 3])
    # A negative ranked first: precision 1/2 at recall 1/2, not the 2/3 reached later (no envelope).
    assert curve(table([0, 1, 1], [0.9, 0.5, 0.1]), "pr", [0, 0.5, 1]) == pytest.approx([0.5, 0.5, 2 / 3])


def test_the_area_under_the_roc_on_the_grid_is_the_auroc_ties_included():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(12), np.zeros(8)].astype(int)  # 8 negatives: every false-positive rate is on the grid
    p = np.round(rng.uniform(size=20) * 0.6 + 0.3 * y, 1)  # ties across classes: diagonal segments
    grid = np.linspace(0, 1, 1001)
    roc = curve(table(y, p), "roc", grid)
    area = np.sum((roc[1:] + roc[:-1]) / 2 * np.diff(grid))
    assert area == pytest.approx(stats.auroc(y, p))


def test_weights_are_resampled_rows_and_a_resample_without_a_class_has_no_curve():
    rng = np.random.default_rng(1)
    frame = table(rng.integers(0, 2, 15), rng.uniform(size=15))
    counts = rng.integers(0, 3, 15)
    counts[frame["target"].to_numpy() == 1][:1] += 1
    rows = frame.loc[np.repeat(np.arange(15), counts)].reset_index(drop=True)
    rows["path"] = [f"r{i}" for i in range(len(rows))]
    for kind in ("roc", "pr"):
        weighted = curve_scorer(frame, kind)(counts[None, :].astype(float))[0]
        assert weighted == pytest.approx(curve(rows, kind, np.linspace(0, 1, 101)), nan_ok=True)
    no_negatives = (frame["target"].to_numpy() == 1).astype(float)[None, :]
    assert np.isnan(curve_scorer(frame, "roc")(no_negatives)).all()
    assert not np.isnan(curve_scorer(frame, "pr")(no_negatives)).any()


def test_bootstrap_band_of_pooled_tables():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    patients = [f"p{i // 2}" for i in range(60)]
    tables = [table(y, np.clip(0.3 * y + rng.uniform(size=60) * 0.7, 0, 1), patients) for _ in range(2)]
    band = bootstrap_curve(tables, "roc", n_boot=300, seed=0)
    means = np.mean([curve(t, "roc", band["x"]) for t in tables], axis=0)
    assert band["y"].to_numpy() == pytest.approx(means)
    assert (band["ci_low"] <= band["y"] + 1e-9).all() and (band["y"] <= band["ci_high"] + 1e-9).all()
    assert (band["ci_high"] - band["ci_low"]).iloc[5:40].min() > 0.02  # a real band, not a line
    assert band.equals(bootstrap_curve(tables, "roc", n_boot=300, seed=0))
    with pytest.raises(ValueError, match="Unknown curve"):
        bootstrap_curve(tables, "det")
