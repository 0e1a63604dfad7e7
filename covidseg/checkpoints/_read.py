"""The one way covidseg reads checkpoints: without running code from them.

A checkpoint is a pickle, and an unrestricted `torch.load` (weights_only off) runs whatever callable a
tampered file names (its `__reduce__`), before covidseg sees any of it. Everything here loads with torch's
restricted unpickler (`weights_only=True`), which rebuilds only tensors, plain containers and the globals
allowed below.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from covidseg.errors import UserError
from covidseg.models.divergence import non_finite
from covidseg.runs.checks import check_recorded_preprocessing

if TYPE_CHECKING:
    from lightning import LightningModule

# Globals that real covidseg checkpoints need beyond torch's own weights-only allow-list. Found empirically
# on checkpoints written by `covidseg-train`, `covidseg-train-segmenter` and a Trainer fit with the configured
# callbacks (ModelCheckpoint with save_last, EarlyStopping), the CSV logger, the Adam optimizer and the
# cosine / reduce-on-plateau schedulers: none. Hyperparameters are plain containers because the entry points
# instantiate models with `_convert_="all"` and store data_config via OmegaConf.to_container; callback,
# loop, optimizer, scheduler and grad-scaler states hold only tensors, numbers, strings, lists and dicts.
# Add a global here only with a comment saying which checkpoint needs it and why it cannot run code.
ALLOWED_GLOBALS: list[Any] = []

# A classifier's operating point, chosen on validation after training and added to best.ckpt
# (covidseg.inference.thresholds): {"rule", "threshold", "positive_class", "chosen_on", "n_val", ...}.
OPERATING_POINT_KEY = "covidseg_operating_point"

TRUST_HINT = (
    "Only load checkpoints you trust, or retrain (covidseg-train / covidseg-train-segmenter) "
    "to get a clean one."
)

Module = TypeVar("Module", bound="LightningModule")


def _refused(message: str) -> str | None:
    """What the restricted unpickler refused: the global it was asked to import, or the pickle instruction."""
    match = re.search(r"GLOBAL (\S+)", message)
    if match:
        return match.group(1)
    match = re.search(r"Unsupported operand (\S+)", message)
    if match:
        return f"pickle instruction {match.group(1)}"
    return "Python objects" if "Weights only load failed" in message else None


def _one_line(err: Exception) -> str:
    """The start of an error's message on one line (torch's and Lightning's span several)."""
    return " ".join(str(err).split())[:200]


@contextmanager
def _checkpoint_errors(
    path: Path, missing_hint: str, kind: str, not_ours: tuple[type[Exception], ...]
) -> Iterator[None]:
    """Load inside this: the allow-list is active, a refused pickle and the `not_ours` errors become
    UserErrors that name the file."""
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist. {missing_hint}")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            yield
    except UserError:
        raise  # already says what is wrong with the file (load_mapped: a damaged one)
    except pickle.UnpicklingError as err:
        refused = _refused(str(err))
        if refused is None:
            raise UserError(
                f"{path} is not a covidseg {kind} (unreadable pickle: {_one_line(err)}). {missing_hint}"
            ) from err
        raise UserError(
            f"{path} contains Python objects covidseg will not unpickle ({refused}): it was not "
            f"written by covidseg, or was tampered with. {TRUST_HINT}"
        ) from err
    except not_ours as err:
        raise UserError(
            f"{path} is not a covidseg {kind} ({type(err).__name__}: {_one_line(err)}). {missing_hint}"
        ) from err


@contextmanager
def safe_loading() -> Iterator[None]:
    """For loads that Lightning does itself (`trainer.fit(ckpt_path=..., weights_only=True)` on resume):
    the same allow-list as everything here. Read the file with read_checkpoint first for clear errors."""
    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        yield


def _read(path: Path, missing_hint: str, kind: str) -> dict[str, Any]:
    # Any error: the restricted unpickler fails on bytes that are not a checkpoint in many ways
    # (EOFError, KeyError, IndexError, RuntimeError from the zip reader, ...).
    with _checkpoint_errors(path, missing_hint, kind, (Exception,)):
        checkpoint = load_mapped(path, map_location="cpu")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = (
            f"a dict with keys {sorted(map(str, checkpoint))[:8]}"
            if isinstance(checkpoint, dict)
            else f"a {type(checkpoint).__name__}"
        )
        raise UserError(
            f"{path} is not a covidseg {kind}: it holds {found}, not a Lightning checkpoint "
            f"with a state_dict. {missing_hint}"
        )
    return checkpoint


def load_mapped(path: str | Path, map_location: Any = "cpu") -> Any:
    """torch.load restricted to weights (weights_only=True), with the tensors memory-mapped from the file:
    reading a checkpoint (the best epoch after fit, a resume, a test) costs page cache, not anonymous memory
    (a resnet18 + Adam checkpoint is 134 MB). Checkpoints are replaced by rename, never rewritten in place, so
    a mapping never sees another file's bytes.

    Raises:
        UserError: the file's bytes do not match the CRC-32s written with them (damaged_record).
    """
    damaged = damaged_record(Path(path))
    if damaged is not None:
        raise UserError(
            f"{path} is damaged: its record {damaged} does not match the CRC-32 written with it (the file "
            "changed after it was saved: a disk, copy or transfer error). Copy it again from where it came "
            "from, or retrain to get a new one."
        )
    return torch.load(path, map_location=map_location, weights_only=True, mmap=True)


def damaged_record(path: Path) -> str | None:
    """The first record (zip member) of a checkpoint whose bytes do not match their CRC-32, else None.

    torch.load checks no CRC, with or without mmap: a flipped bit in a tensor loads as a changed weight.
    Reading the file once more costs about 50 ms per 134 MB from the page cache. Files without CRCs
    (written with torch's compute_crc32 off, as covidseg's checkpoints were before they kept them) cannot
    be checked and pass; so do files that are not uncompressed zip archives, which torch.load then
    describes itself."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return None
    with archive:
        records = archive.infolist()
        if not any(r.CRC for r in records) or any(r.compress_type != zipfile.ZIP_STORED for r in records):
            return None
        try:
            return archive.testzip()  # the first member whose CRC (or local header) is wrong
        except (EOFError, OSError):  # cut short: torch.load says so
            return None


def read_checkpoint(path: str | Path, missing_hint: str) -> dict[str, Any]:
    """A Lightning checkpoint's contents (state_dict, epoch, hyper_parameters, ...) on CPU, loaded safely."""
    return _read(Path(path), missing_hint, "checkpoint")


def check_usable(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose outputs would mean nothing: NaN or infinite weights (a diverged run), or
    recorded preprocessing no image can be prepared with (std 0, an image size below 32 or not a number).

    Every covidseg command that runs a trained network (eval, predict, export, a segmenter making masks)
    loads it through load_module, so this is the one place these are checked.
    """
    bad = non_finite(checkpoint["state_dict"])
    if bad:
        raise UserError(
            f"{path} holds NaN or infinite weights ({len(bad)} tensor(s), e.g. {bad[0]}): the run that wrote "
            "it diverged, so every output would be NaN. Retrain with a lower learning rate "
            "(model.optimizer.lr) and use the checkpoint of a run that finished (it wrote metrics.json)."
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    # The classifier records its data config as data_config; the segmenter's size and normalisation are
    # hyperparameters of its own.
    check_recorded_preprocessing(hparams.get("data_config") or hparams, str(path))


def load_module(module_class: type[Module], path: str | Path, missing_hint: str, **overrides: Any) -> Module:
    """`module_class.load_from_checkpoint` on CPU, loaded safely, with errors that say what is wrong.

    `overrides` replace saved hyperparameters (e.g. switch off reading the starting weights again).
    """
    path = Path(path)
    kind = f"{module_class.__name__} checkpoint"
    # Read once ourselves first (about a tenth of the module's load time): a file that is not a Lightning
    # checkpoint then fails with a clear message instead of an arbitrary error from inside Lightning.
    check_usable(_read(path, missing_hint, kind), path)
    # The file is a readable checkpoint by now, so only what a checkpoint of another model raises
    # (missing or unexpected weights and hyperparameters) is the user's; anything else is a bug.
    not_ours = (KeyError, TypeError, RuntimeError, ValueError)
    with _checkpoint_errors(path, missing_hint, kind, not_ours):
        # `_instantiator=None` overrides any "_instantiator" a tampered checkpoint's hyper_parameters name:
        # Lightning would import and call it to build the module. covidseg never writes one.
        return module_class.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, **overrides, _instantiator=None
        )


def operating_point(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The operating point a classifier checkpoint stores (OPERATING_POINT_KEY): the threshold on the positive
    class's probability (prob > threshold is positive) and the rule that chose it.

    Args:
        checkpoint: the checkpoint's contents (read_checkpoint, or Lightning's dict in on_load_checkpoint).

    Returns:
        a copy of the stored dict; None for checkpoints without one (written before covidseg stored one, or
        during training), whose predictions keep the old fixed rule prob > 0.5.

    Raises:
        UserError: the stored point has no rule or no finite threshold.
    """
    point = checkpoint.get(OPERATING_POINT_KEY)
    if point is None:
        return None
    threshold = point.get("threshold") if isinstance(point, Mapping) else None
    if (
        not isinstance(point, Mapping)
        or not isinstance(point.get("rule"), str)
        or isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
    ):
        raise UserError(
            f"The checkpoint's {OPERATING_POINT_KEY} is not a rule with a finite threshold ({point!r}): it "
            f"was changed after covidseg wrote it. {TRUST_HINT}"
        )
    return dict(point)
