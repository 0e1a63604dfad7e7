"""The run directory's file names, in one place: what a job writes and what covidseg-report, resume and
users' scripts read back (a contract: renaming one breaks their scripts).

A training run (covidseg-train) writes, in its folder (hydra.run.dir, or <sweep>/<job> in a multirun):
.hydra/config.yaml, CONFIG_RESOLVED, SPLITS, CHECKPOINTS/{BEST,LAST}, METRICS, PREDICTIONS,
predictions_<external set>.csv, LUNG_ENERGY, CAM_GALLERY, MASK_STATS and MASKS_OVERVIEW (segmented input),
CURVES (csv logger) and FAILED when a job of a sweep failed. A segmenter run writes METRICS, OVERLAYS and
SEGMENTATION_SCORES; covidseg-predict writes PREDICTIONS (and PATIENT_PREDICTIONS with aggregate=patient);
covidseg-export writes PREPROCESSING beside its networks; covidseg-report writes REPORT, REPORT_HTML,
RESULTS, SUMMARY, COMPARISONS and MODEL_CARDS/<model>_<input>.md in the sweep folder.
"""

from __future__ import annotations

HYDRA_CONFIG = ".hydra/config.yaml"  # the job's composed config, as Hydra writes it
CONFIG_RESOLVED = "config_resolved.yaml"  # every interpolation resolved (absolute paths)
SPLITS = "splits.csv"
CHECKPOINTS = "checkpoints"
BEST = "best.ckpt"
LAST = "last.ckpt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
PATIENT_PREDICTIONS = "patient_predictions.csv"  # covidseg-predict aggregate=patient: one row per patient
FAILED = "failed.json"
LUNG_ENERGY = "lung_energy.json"
CAM_GALLERY = "cam_gallery.npz"
MASK_STATS = "mask_stats.csv"
MASKS_OVERVIEW = "masks_overview.png"
CURVES = "csv/metrics.csv"  # Lightning's CSVLogger, per epoch
OVERLAYS = "overlays.png"
SEGMENTATION_SCORES = "segmentation_scores.csv"
PREPROCESSING = "preprocessing.json"
REPORT = "report.md"
REPORT_HTML = "report.html"  # report.md with its figures inlined: one file to share
RESULTS = "results.csv"  # one row per job
SUMMARY = "summary.csv"  # one row per test set, model and metric: every cell of the report's metric tables
COMPARISONS = "comparisons.csv"  # one row per test set, model, compared input and metric: tests and intervals
MODEL_CARDS = "model_cards"


def predictions_file(external: str | None = None) -> str:
    """PREDICTIONS for the internal test split, predictions_<name>.csv for the external set `name`."""
    return PREDICTIONS if external is None else f"predictions_{external}.csv"
