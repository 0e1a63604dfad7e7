"""The metric vocabulary every part of covidseg uses (metrics.json keys, report tables, statistics)."""

METRIC_NAMES = ("acc", "precision", "recall", "specificity", "f1", "auroc")
