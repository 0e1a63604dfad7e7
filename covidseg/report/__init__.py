"""covidseg-report <multirun dir>: the raw-vs-segmented comparison of a sweep, with honest statistics.

Writes into the sweep folder: report.md (a summary first: the question, the answer with intervals on every
test set, the warnings; then tables and figures; the Methods once at the end), report.html (the same in one
file, figures inlined), results.csv (one row per job), summary.csv and comparisons.csv (every number of the
tables), model_cards/<model>_<input>.md, roc_pr(_<set>).png, calibration.png, curves.png +
curves_<backbone>.png, confusion.png, cam_gallery.png, external_auroc.png (with external sets), and
lung_energy.json per job. Everything is computed from the jobs' own files (metrics.json, predictions.csv,
predictions_<external set>.csv, csv/metrics.csv, .hydra/config.yaml, checkpoints/best.ckpt); nothing is
typed in by hand.

collect: the jobs of a sweep (one per backbone, input, seed and fold); pooling: the prediction tables
behind every interval (K folds pooled out-of-fold); jobs: one job's model, test data and lung energy;
tables, comparisons, calibration, summary, sections, methods and text: what the report says; figures and
curves: what it shows; html and model_card: the other files; build: the report and the command line.
A sweep of covidseg-train-segmenter gets the segmenter report instead (segmenter, segmenter_figures).
"""

from covidseg.report.build import build_report, main

__all__ = ["build_report", "main"]
