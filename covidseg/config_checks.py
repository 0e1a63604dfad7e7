"""Check a job's config up front, so a bad value is one clear UserError instead of a traceback minutes later.

`check_config(cfg)` validates whichever of the known options the config has (each entry point has a
different subset) and resolves every interpolation, naming the option and the allowed values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from covidseg.data.intensity import check_clahe_clip, check_equalize_mode
from covidseg.data.split import SPLITS, check_folds
from covidseg.errors import UserError

MIN_IMAGE_SIZE = 32  # the backbones downsample by 32; smaller inputs vanish before the classifier head
_ABSENT = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_at_least(minimum: int, example: int) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if not _is_int(value) or value < minimum:
            raise UserError(
                f"{key} must be an integer >= {minimum}, got {value!r}. Set e.g. {key}={example}."
            )

    return check


def _workers(key: str, value: Any) -> None:
    if value != "auto" and (not _is_int(value) or value < 0):
        raise UserError(f"{key} must be an integer >= 0 or auto, got {value!r}. Set e.g. {key}=auto.")


def _on_device(key: str, value: Any) -> None:
    if value not in (True, False, "auto") or (isinstance(value, int) and not isinstance(value, bool)):
        raise UserError(f"{key} must be true, false or auto, got {value!r}. Set e.g. {key}=auto.")


def _limit(key: str, value: Any) -> None:
    if value is not None and (not _is_int(value) or value < 1):
        raise UserError(
            f"{key} must be null (all images) or an integer >= 1, got {value!r}. "
            f"Set e.g. {key}=60 or {key}=null."
        )


def _positive_number(key: str, value: Any) -> None:
    if not _is_number(value) or value <= 0:
        raise UserError(f"{key} must be a number > 0, got {value!r}. Set e.g. {key}=0.001.")


def _max_epochs(key: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise UserError(
            f"{key} must be an integer >= 1, got {value!r} (0 or -1 would test an untrained or "
            f"endlessly trained model). Set e.g. {key}=12."
        )


RULES: dict[str, Callable[[str, Any], None]] = {
    "data.image_size": _int_at_least(MIN_IMAGE_SIZE, 224),
    "data.batch_size": _int_at_least(1, 32),
    "data.num_workers": _workers,
    "data.on_device": _on_device,
    "data.limit": _limit,
    "trainer.max_epochs": _max_epochs,
    "model.optimizer.lr": _positive_number,
    "data.equalize": check_equalize_mode,
    "data.clahe_clip": check_clahe_clip,
}


def check_config(cfg: DictConfig) -> None:
    """Raise a UserError naming the option and its allowed values for the first bad value in `cfg`."""
    _resolve_everything(cfg)
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            rule(key, value)
    split_file = OmegaConf.select(cfg, "data.split_file", default=None)
    folds = OmegaConf.select(cfg, "data.folds", default=None)
    if folds is not None:
        _check_cross_validation(folds, OmegaConf.select(cfg, "data.fold", default=0), split_file)
    ratios = OmegaConf.select(cfg, "data.split_ratios", default=_ABSENT)
    if ratios is not _ABSENT:
        # With folds the test split is the fold; the ratios only carve val from the other folds.
        required = () if split_file else ("train", "val") if folds is not None else SPLITS
        _check_split_ratios(ratios, required=required)


def _check_cross_validation(folds: Any, fold: Any, split_file: Any) -> None:
    """data.folds/data.fold; whether K fits the data (patients per class) is checked when splitting."""
    check_folds(folds, fold)
    if split_file:
        raise UserError(
            f"data.folds={folds} and data.split_file={split_file} both define the test split; "
            "set data.folds=null to use the file, or data.split_file=null for cross-validation."
        )


def _resolve_everything(cfg: DictConfig) -> None:
    """Interpolation and missing-value errors from OmegaConf, as a UserError naming the option."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "an option"
        raise UserError(
            f"{key} has no value (??? in the config). Give it on the command line, e.g. {key}=..."
        ) from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "the config"
        message = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise UserError(
            f"{key}: cannot resolve its value ({message}). Fix the interpolation ${{...}} "
            f"or give a plain value, e.g. {key}=<value>."
        ) from err


def _check_split_ratios(ratios: Any, required: tuple[str, ...]) -> None:
    """Non-negative numbers for train/val/test; the splits a training run needs must be > 0.
    null means the default 7:2:1 (covidseg.data.split.DEFAULT_SPLIT_RATIOS)."""
    example = "data.split_ratios={train:0.7,val:0.1,test:0.2}"
    if ratios is None:
        return
    if not isinstance(ratios, Mapping):
        raise UserError(
            f"data.split_ratios must be null or map train/val/test to shares, got {ratios!r}. "
            f"Set e.g. {example}."
        )
    unknown = sorted(str(k) for k in ratios if k not in SPLITS)
    if unknown:
        raise UserError(
            f"data.split_ratios has unknown split(s) {unknown}; use only {list(SPLITS)}, e.g. {example}."
        )
    for split, share in ratios.items():
        if not _is_number(share) or share < 0:
            raise UserError(
                f"data.split_ratios.{split} must be a number >= 0, got {share!r}. Set e.g. {example}."
            )
    empty = [s for s in required if not ratios.get(s)]
    if empty:
        raise UserError(
            f"data.split_ratios gives no share to {empty} (got {dict(ratios)}); training needs "
            f"images in train, val (checkpoint choice) and test (metrics). Set e.g. {example}."
        )
