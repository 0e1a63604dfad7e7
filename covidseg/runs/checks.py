"""Check a job's config up front, so a bad value is one clear UserError instead of a traceback minutes later.

`check_config(cfg)` validates whichever of the known options the config has (each entry point has a
different subset) and resolves every interpolation, naming the option and the allowed values.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from covidseg.data.intensity import check_clahe_clip, check_equalize_mode
from covidseg.data.split import SPLITS, check_folds
from covidseg.errors import UserError
from covidseg.explain.gradcam import CAM_METHODS
from covidseg.stats.operating_point import RULE_OPTION, parse_rule

MIN_IMAGE_SIZE = 32  # the backbones downsample by 32; smaller inputs vanish before the classifier head
MAX_SEED = 2**32 - 1
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


def _positive_number(example: float) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        # nan and inf pass `value > 0` checks; as a learning rate or a divisor they only make NaNs.
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise UserError(f"{key} must be a number > 0, got {value!r}. Set e.g. {key}={example}.")

    return check


def _finite_number(key: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value!r}. Set e.g. {key}=0.5.")


def _seed(key: str, value: Any) -> None:
    # The range numpy's and Lightning's seeding take; a string or a negative number fails there, after the
    # data set-up, with a traceback.
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise UserError(f"{key} must be an integer in 0..{MAX_SEED}, got {value!r}. Set e.g. {key}=0.")


def _max_epochs(key: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise UserError(
            f"{key} must be an integer >= 1, got {value!r} (0 or -1 would test an untrained or "
            f"endlessly trained model). Set e.g. {key}=12."
        )


def _threshold(key: str, value: Any) -> None:
    # 0 or 1 would call (nearly) every image one class under the rule prob > threshold.
    if value is not None and (not _is_number(value) or not 0.0 < value < 1.0):
        raise UserError(
            f"{key} must be null or a number strictly between 0 and 1, got {value!r}. Set e.g. {key}=0.5."
        )


def _one_of(allowed: tuple[str, ...]) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value not in allowed:
            raise UserError(
                f"{key} must be one of {list(allowed)}, got {value!r}. Set e.g. {key}={allowed[0]}."
            )

    return check


# Keys are full config paths; each entry point's config has its own subset (predict's are top-level).
RULES: dict[str, Callable[[str, Any], None]] = {
    "data.image_size": _int_at_least(MIN_IMAGE_SIZE, 224),
    "data.batch_size": _int_at_least(1, 32),
    "data.num_workers": _workers,
    "data.on_device": _on_device,
    "data.limit": _limit,
    "trainer.max_epochs": _max_epochs,
    "model.optimizer.lr": _positive_number(0.001),
    "data.mean": _finite_number,
    "data.std": _positive_number(0.25),
    "data.equalize": check_equalize_mode,
    "data.clahe_clip": check_clahe_clip,
    "seed": _seed,
    "data.seed": _seed,
    "batch_size": _int_at_least(1, 64),
    "chunk_size": _int_at_least(1, 1024),
    "num_workers": _int_at_least(0, 0),
    "cam_method": _one_of(CAM_METHODS),
    RULE_OPTION: lambda key, value: parse_rule(value, key),
    "eval.threshold": _threshold,
}
# The data options a checkpoint records that decide how images become network inputs (its `data_config`;
# the segmenter's own hyperparameters): a bad one there makes every output NaN or meaningless.
PREPROCESSING = ("image_size", "mean", "std", "equalize", "clahe_clip")


def check_config(cfg: DictConfig) -> None:
    """Raise a UserError naming the option and its allowed values for the first bad value in `cfg`."""
    resolved = _resolve_everything(cfg)
    _check_targets(resolved, "")
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            rule(key, value)
    split_file = OmegaConf.select(cfg, "data.split_file", default=None)
    folds = OmegaConf.select(cfg, "data.folds", default=None)
    fold = OmegaConf.select(cfg, "data.fold", default=0)
    if folds is not None:
        _check_cross_validation(folds, fold, split_file)
    elif fold not in (0, None):
        raise UserError(
            f"data.fold={fold} has no effect: data.folds is null (one train/val/test split). For K-fold "
            f"cross-validation set data.folds=K as well (e.g. data.folds=5 data.fold={fold}), "
            "or drop data.fold."
        )
    rule = OmegaConf.select(cfg, RULE_OPTION, default=None)
    threshold = OmegaConf.select(cfg, "eval.threshold", default=None)
    if rule is not None and threshold is not None and parse_rule(rule).kind != "fixed":
        raise UserError(
            f"eval.threshold={threshold} has no effect with {RULE_OPTION}={rule}, which chooses the "
            f"threshold on the validation split. Set {RULE_OPTION}=fixed as well to use it, or drop "
            "eval.threshold."
        )
    ratios = OmegaConf.select(cfg, "data.split_ratios", default=_ABSENT)
    if ratios is not _ABSENT:
        # With folds the test split is the fold; the ratios only carve val from the other folds.
        required = () if split_file else ("train", "val") if folds is not None else SPLITS
        _check_split_ratios(ratios, required=required)


def check_recorded_preprocessing(record: Mapping[str, Any], source: str) -> None:
    """The preprocessing `source` (a checkpoint file) recorded at training time, by the data.* rules above.

    Raises a UserError naming the file, the value and the fix (the weights only fit the preprocessing they
    were trained with, so the fix is to retrain, not to override it).
    """
    for name in PREPROCESSING:
        if name in record:
            try:
                RULES[f"data.{name}"](f"data.{name}", record[name])
            except UserError as err:
                raise UserError(
                    f"{source} records preprocessing no image can be prepared with: {err} Retrain with that "
                    "setting (covidseg-train): a checkpoint's weights only fit the preprocessing they were "
                    "trained with."
                ) from None


def _check_cross_validation(folds: Any, fold: Any, split_file: Any) -> None:
    """data.folds/data.fold; whether K fits the data (patients per class) is checked when splitting."""
    check_folds(folds, fold)
    if split_file:
        raise UserError(
            f"data.folds={folds} and data.split_file={split_file} both define the test split; "
            "set data.folds=null to use the file, or data.split_file=null for cross-validation."
        )


def _resolve_everything(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` as plain containers, every interpolation resolved; interpolation and missing-value errors from
    OmegaConf as a UserError naming the option."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
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


def _check_targets(node: Any, path: str) -> None:
    """Every key of a node with a `_target_` (trainer, callbacks, loggers, data, model, optimizer, scheduler)
    must be a parameter of what it builds: a `+trainer.max_epoch=1` or `+model.optimizer.learning_rate=5`
    is otherwise a TypeError from hydra.utils.instantiate, after the data set-up."""
    if isinstance(node, Mapping):
        if isinstance(node.get("_target_"), str):
            _check_target_keys(node, path)
        for key, value in node.items():
            if path or key != "hydra":  # Hydra's own node is checked by Hydra
                _check_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_targets(value, f"{path}[{i}]")


def _check_target_keys(node: Mapping[str, Any], path: str) -> None:
    name = node["_target_"]
    try:
        target = _locate(name)
    except (ImportError, AttributeError) as err:
        module, _, attribute = name.rpartition(".")
        close = _close_attributes(module, attribute)
        hint = f"Did you mean {path}._target_={module}.{close[0]}?" if close else "Give an importable name."
        message = " ".join(str(err).split())
        raise UserError(f"{path}._target_={name} cannot be imported ({message}). {hint}") from None
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no introspectable signature (some built-ins): instantiate will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    names = [
        n
        for n, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in node:
        key = str(key)
        if key in names or (key.startswith("_") and key.endswith("_")):  # _target_, _partial_, _convert_...
            continue
        close = _close_names(key, names)
        hint = f"Did you mean {path}.{close}?" if close else f"Its options: {', '.join(names)}."
        raise UserError(f"{path}.{key} is not an option of {name}. {hint}")


def _locate(name: str) -> Any:
    """The object a dotted `_target_` names, as hydra.utils.instantiate finds it (without its error log)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError as err:
            if end == 1 or not (err.name and ".".join(parts[:end]).startswith(err.name)):
                raise
            continue
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"no module in {name!r}")


def _close_names(key: str, names: list[str]) -> str | None:
    """The option `key` was probably meant as: a close spelling, or the one its words abbreviate
    (learning_rate -> lr)."""
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return close[0]
    initials = "".join(word[:1] for word in key.split("_"))
    return initials if len(initials) > 1 and initials in names else None


def _close_attributes(module: str, attribute: str) -> list[str]:
    try:
        return difflib.get_close_matches(attribute, dir(importlib.import_module(module)), n=1, cutoff=0.6)
    except ImportError:
        return []
