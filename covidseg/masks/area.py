"""Does the lung mask eat the disease? The predicted lung area per class, compared.

A segmenter that follows only the aerated lung leaves consolidated and opaque regions outside its mask, so
the masks of diseased images come out systematically smaller than those of normal ones, and "segmented"
input has the very findings that define the positive class cut away. The lung-area fraction per image is
in mask_stats.csv; this module summarises it per class and says when the positive class's masks are
clearly smaller than the other classes' (both a relative difference a reader would care about and one
that is unlikely to be chance), so that the training log, metrics.json and the report can warn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

# Warn when the positive class's median mask area is at least this much smaller (relative) than the other
# classes' ... (normal adult lungs vary by about this much between images, so less is not a finding)
SMALLER_BY = 0.10
# ... and a two-sided Mann-Whitney test says the difference is unlikely to be chance.
P_VALUE = 0.01


@dataclass(frozen=True)
class AreaByClass:
    """Lung-area fraction per class, and the positive class against all others.

    Attributes:
        table: one row per class: n, median, q25, q75 of the lung-area fraction.
        positive: the positive class (the last of data.classes).
        relative_difference: (median of the others - median of the positive class) / median of the others;
            > 0 when the positive class's masks are smaller.
        p_value: two-sided Mann-Whitney U test, positive class against the others (nan with too few images).
        others_median: the median lung-area fraction of all images of the other classes together.
    """

    table: pd.DataFrame
    positive: str
    relative_difference: float
    p_value: float
    others_median: float

    @property
    def masks_eat_the_finding(self) -> bool:
        """True when the positive class's masks are clearly and significantly smaller (SMALLER_BY,
        P_VALUE)."""
        return bool(self.relative_difference >= SMALLER_BY and self.p_value < P_VALUE)

    def warning(self) -> str | None:
        """One sentence for the log and the report when masks_eat_the_finding, else None."""
        if not self.masks_eat_the_finding:
            return None
        return (
            f"The lung masks of '{self.positive}' images are {100 * self.relative_difference:.0f} % smaller "
            f"than the other classes' (median lung-area fraction {self.median(self.positive):.3f} vs "
            f"{self.others_median:.3f}, Mann-Whitney {p_clause(self.p_value)}): the segmenter likely leaves "
            "opaque or consolidated lung outside its mask, so segmented input loses part of the finding. "
            "Check masks_overview.png, and train the segmenter on diseased lungs too (docs: Stage 1)."
        )

    def median(self, label: str) -> float:
        """The median lung-area fraction of class `label`."""
        return float(self.table.loc[label, "median"])

    def metrics(self) -> dict[str, float]:
        """metrics.json entries: mask_area/<class>/median, mask_area/relative_difference and
        mask_area/p_value."""
        out = {f"mask_area/{label}/median": round(self.median(label), 4) for label in self.table.index}
        out["mask_area/relative_difference"] = round(self.relative_difference, 4)
        out["mask_area/p_value"] = float(self.p_value)
        return out


def area_by_class(stats: pd.DataFrame, positive: str) -> AreaByClass | None:
    """Summarise mask_stats.csv's `lung_area_fraction` per `label`, the positive class against the others.

    Args:
        stats: one row per image with columns label and lung_area_fraction (mask_stats.csv).
        positive: the positive class.

    Returns:
        The summary, or None when the positive class or every other class has no image (nothing to compare).
    """
    area = stats["lung_area_fraction"].astype(float)
    is_positive = stats["label"] == positive
    if not is_positive.any() or is_positive.all():
        return None
    grouped = area.groupby(stats["label"])
    table = pd.DataFrame(
        {
            "n": grouped.size(),
            "median": grouped.median(),
            "q25": grouped.quantile(0.25),
            "q75": grouped.quantile(0.75),
        }
    )
    mine, others = area[is_positive].to_numpy(), area[~is_positive].to_numpy()
    others_median = float(np.median(others))
    relative = (others_median - float(np.median(mine))) / others_median if others_median > 0 else 0.0
    p_value = float(mannwhitneyu(mine, others).pvalue) if min(len(mine), len(others)) >= 3 else float("nan")
    return AreaByClass(table, positive, relative, p_value, others_median)


def markdown_table(summary: AreaByClass) -> str:
    """The per-class table for the report: class, images, median lung-area fraction and its IQR."""
    lines = ["| class | images | median lung-area fraction | IQR |", "|---|---|---|---|"]
    for label, row in summary.table.iterrows():
        lines.append(
            f"| {label} | {int(row['n'])} | {row['median']:.3f} | {row['q25']:.3f}–{row['q75']:.3f} |"
        )
    return "\n".join(lines)


def format_p(value: float) -> str:
    """A p value as a reader expects it: three decimals, "< 0.001" below that, "–" without one (nan)."""
    if np.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def p_clause(value: float) -> str:
    """ "p = 0.012", "p < 0.001" or "p n/a (too few images)" for a sentence."""
    if np.isnan(value):
        return "p n/a (too few images)"
    text = format_p(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"
