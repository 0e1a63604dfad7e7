"""Running a trained classifier on new, unlabelled images: which files, prepared how, and what is written.

Images are prepared by the classifier's own data module (covidseg.data.datamodule.CXRDataModule rebuilt
from the data config recorded in the checkpoint): the same decoding, size, intensity preprocessing, lung
masks and normalisation as in training, through the same code.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidseg.checkpoints import read_checkpoint
from covidseg.data.datamodule import CXRDataModule
from covidseg.data.manifest import IMAGE_SUFFIXES
from covidseg.errors import UserError
from covidseg.inference.evaluation import evaluation_datamodule
from covidseg.models.classifier import Classifier
from covidseg.models.metrics import POSITIVE_THRESHOLD, predicted_positive
from covidseg.outputs import read_csv

log = logging.getLogger(__name__)

CKPT_HINT = "Give ckpt_path=<train run>/checkpoints/best.ckpt."
INPUTS_HINT = "Give inputs=<image file | folder | glob such as 'scans/**/*.dcm' | CSV with a path column>."


def check_classifier_checkpoint(path: str | Path) -> None:
    """A clear UserError for a checkpoint that is not a covidseg classifier (e.g. the lung segmenter's)."""
    hparams = read_checkpoint(path, CKPT_HINT).get("hyper_parameters") or {}
    if "class_names" in hparams:
        if not hparams.get("data_config"):
            raise UserError(
                f"ckpt_path={path} records no data_config (how its images were prepared), so covidseg cannot "
                "prepare new images the same way. Retrain it with covidseg-train."
            )
        return
    what = (
        "a lung segmenter checkpoint"
        if {"arch", "encoder"} <= set(hparams)
        else "not a classifier checkpoint"
    )
    raise UserError(f"ckpt_path={path} is {what}; covidseg-predict needs a classifier. {CKPT_HINT}")


def _has_dicom_marker(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _folder_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively, hidden ones left out); DICOM files often have no suffix.

    Entries with an image suffix that are no readable file (a broken link, a FIFO) are kept, so that
    predictions.csv says why they got no prediction; a file without suffix is opened to look for the DICOM
    marker only if it is a regular file (a FIFO would block)."""
    found, ignored = [], 0
    for f in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in f.relative_to(folder).parts) or f.is_dir():
            continue
        if f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and f.is_file() and _has_dicom_marker(f)):
            found.append(f)
        else:
            ignored += 1
    if ignored:
        log.info("inputs=%s: ignored %d file(s) that are not images (e.g. metadata.csv)", folder, ignored)
    return found


def _read_input_csv(csv: Path) -> pd.DataFrame:
    """An inputs CSV as written (every value a string), with a `path` column without empty values."""
    try:
        table = read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"inputs={csv} is not a readable CSV ({err}). {INPUTS_HINT}") from err
    if "path" not in table.columns:
        raise UserError(f"inputs={csv} has no `path` column (it has {list(table.columns)}). {INPUTS_HINT}")
    table["path"] = [v.strip() for v in table["path"]]
    empty = [i + 2 for i, v in enumerate(table["path"]) if not v]
    if empty:
        raise UserError(f"inputs={csv}: line(s) {empty[:5]} have an empty path. Fill or remove them.")
    return table


def _csv_images(csv: Path) -> tuple[list[Path], list[str]]:
    """The files a CSV's `path` column lists (relative to the CSV's folder), and the values as written."""
    values = list(_read_input_csv(csv)["path"])
    return [csv.parent / Path(v).expanduser() for v in values], values


def _input_csv(spec: str) -> Path | None:
    """The CSV that `inputs=` names, None when it names images."""
    path = Path(spec).expanduser()
    return path if path.is_file() and path.suffix.lower() == ".csv" else None


def input_table(spec: str) -> pd.DataFrame | None:
    """The inputs CSV's columns other than `path` (accession numbers, study ids, ...), one row per file that
    collect_inputs lists, in its order, values as written; None when `inputs=` names images, not a CSV."""
    csv = _input_csv(str(spec))
    return None if csv is None else _read_input_csv(csv).drop(columns="path")


def collect_inputs(spec: str) -> tuple[list[str], list[str]]:
    """The files `inputs=` names, and how each is shown in predictions.csv (as given, or as found).

    spec: one image file, a folder (every image under it), a glob pattern (`**` spans folders), or a
    .csv with a `path` column. Files that turn out unreadable are kept (also broken links, FIFOs and other
    paths that are no regular file, which are never opened): predictions.csv says why."""
    if not str(spec).strip():
        raise UserError(f"inputs is empty. {INPUTS_HINT}")
    path = Path(spec).expanduser()
    if path.is_dir():
        files = _folder_images(path)
        shown = [str(f) for f in files]
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise UserError(
                f"inputs={spec}: the folder holds no image file ({suffixes} or DICOM). {INPUTS_HINT}"
            )
    elif _input_csv(spec) is not None:
        files, shown = _csv_images(path)
        if not files:
            raise UserError(f"inputs={spec} lists no image (the CSV has no rows). {INPUTS_HINT}")
    elif os.path.lexists(path):  # a file, or a broken link or FIFO that gets its error row
        files, shown = [path], [str(spec)]
    elif glob.has_magic(str(spec)):
        files = [Path(f) for f in sorted(glob.glob(str(path), recursive=True)) if not os.path.isdir(f)]
        shown = [str(f) for f in files]
        if not files:
            raise UserError(f"inputs={spec} matches no file. {INPUTS_HINT}")
    else:
        raise UserError(f"inputs={spec} does not exist. {INPUTS_HINT}")
    # a broken link keeps its own path (resolved, it would name a target the user never wrote)
    return [str(f.resolve()) if f.exists() else os.path.abspath(f) for f in files], shown


def prediction_datamodule(
    model: Classifier, cache_dir: str, batch_size: int, segmenter_ckpt: str | None = None
) -> CXRDataModule:
    """The data module the classifier was trained with (size, intensity, input mode, its segmenter checked
    against the recorded SHA-1), for preparing new images with CXRDataModule.prediction_inputs.

    Args:
        model: the trained classifier.
        cache_dir: the image cache's folder.
        batch_size: images per batch.
        segmenter_ckpt: overrides the recorded segmenter path (e.g. after moving the run folders).

    Raises:
        UserError: the segmenter is missing or not the recorded one.
    """
    return evaluation_datamodule(model, {"batch_size": batch_size, "cache_dir": cache_dir}, segmenter_ckpt)


def predicted_classes(
    probs: np.ndarray, class_names: list[str], threshold: float = POSITIVE_THRESHOLD
) -> tuple[list[str], Any]:
    """Each image's predicted class and the rule's threshold: covidseg.models.metrics' rule on the positive
    class (the last) for two classes, the most probable class ('argmax') for more.

    Args:
        probs: class probabilities, one row per image.
        class_names: the classifier's classes.
        threshold: the operating point (two classes only).
    """
    if len(class_names) == 2:
        positive = predicted_positive(probs[:, 1], threshold)
        return [class_names[int(p)] for p in positive], threshold
    return [class_names[i] for i in probs.argmax(axis=1)], "argmax"


def prediction_rows(
    shown: list[str],
    table: pd.DataFrame,
    probs: np.ndarray,
    class_names: list[str],
    point: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """predictions.csv rows of one batch of files: path, prob_<class>..., predicted, threshold,
    threshold_rule, error.

    Args:
        shown: each file's path as the user gave it, in order.
        table: CXRDataModule.prediction_inputs' table; its `error` column marks the unreadable files.
        probs: class probabilities (readable files, class_names order); unreadable files get NaN.
        class_names: the classifier's classes.
        point: the operating point (Classifier.decision_point: rule, threshold); None: 0.5, or argmax for
            more than two classes.
    """
    rows = pd.DataFrame({"path": shown})
    readable = table["error"].isna().to_numpy()
    for i, name in enumerate(class_names):
        rows[f"prob_{name}"] = np.nan
        rows.loc[readable, f"prob_{name}"] = probs[:, i]
    threshold = point["threshold"] if point else POSITIVE_THRESHOLD
    predicted, threshold = predicted_classes(probs, class_names, threshold)
    rows["predicted"] = None
    rows.loc[readable, "predicted"] = predicted
    rows["threshold"] = threshold
    binary_rule = point["rule"] if point else "fixed"
    rows["threshold_rule"] = binary_rule if len(class_names) == 2 else "argmax"
    rows["error"] = table["error"].to_numpy()
    return rows


PREDICTED_CLASS = "predicted"  # cam_class value: each image's own predicted class


def cam_target(cam_class: str | None, class_names: list[str]) -> int | None:
    """The class whose Grad-CAM the overlays show (cam_maps' target_class; None: each image's predicted one).

    cam_class None: the positive class (the last) for two classes, as the report's gallery shows it, and
    each image's predicted class for more; `predicted`: each image's predicted class; else a class name.

    Raises:
        UserError: a name that is not one of the classifier's classes.
    """
    if cam_class is None:
        return len(class_names) - 1 if len(class_names) == 2 else None
    if cam_class == PREDICTED_CLASS:
        return None
    if cam_class not in class_names:
        raise UserError(
            f"cam_class must be null (the positive class), {PREDICTED_CLASS} or one of the classifier's "
            f"classes {class_names}, got {cam_class!r}. Set e.g. cam_class={class_names[-1]}."
        )
    return class_names.index(cam_class)


def cam_label(target: int | None, predicted: str, class_names: list[str], method: str) -> str:
    """What an overlay's heat map explains, e.g. "Grad-CAM of covid" or "Grad-CAM++ of normal (predicted)"."""
    name = "Grad-CAM++" if "++" in method or "plus" in method.lower() else "Grad-CAM"
    return f"{name} of {class_names[target]}" if target is not None else f"{name} of {predicted} (predicted)"


def overlay_title(row: pd.Series, class_names: list[str]) -> str:
    """An overlay's title: the file, the probability of the positive class named as such (every class's for
    more than two), and the decision with its rule: `p(covid) = 0.514 · predicted covid (p(covid) > 0.5)`.

    Args:
        row: the image's predictions.csv row (path, prob_<class>..., predicted, threshold).
        class_names: the classifier's classes.
    """
    file = Path(str(row["path"])).name[:80]
    if len(class_names) == 2:
        positive = class_names[-1]
        probability = f"p({positive}) = {row[f'prob_{positive}']:.3f}"
        rule = f"{positive} if p({positive}) > {row['threshold']:g}"
    else:
        probability = ", ".join(f"p({c}) = {row[f'prob_{c}']:.3f}" for c in class_names)
        rule = "the most probable class"
    return f"{file}\n{probability}  \u00b7  predicted {row['predicted']} ({rule})"
