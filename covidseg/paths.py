"""Where configs, data, caches and logs live; every location can be overridden by an environment variable.

covidseg may run from a source checkout (`make install`, editable) or from a wheel in any site-packages,
so only the configs are found relative to this file (they ship inside the package); data, caches and
logs default to places that do not depend on where the package is installed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from covidseg.outputs import layout

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
_PROJECT_NAME = re.compile(r"""^name\s*=\s*["']covidseg["']""", re.MULTILINE)


def source_checkout() -> Path | None:
    """The repository folder when covidseg is imported from a source checkout, else None (installed wheel)."""
    root = PACKAGE_DIR.parent
    pyproject = root / "pyproject.toml"
    try:
        return root if _PROJECT_NAME.search(pyproject.read_text(encoding="utf-8")) else None
    except OSError:  # no pyproject.toml beside the package: site-packages or a --target folder
        return None


def _conf_dir() -> Path:
    """The Hydra configs: `conf/` at the top of a source checkout, which pyproject.toml ships inside the
    wheel as `covidseg/conf/` (package-dir), so an installed package finds them beside its modules."""
    packaged = PACKAGE_DIR / "conf"
    if packaged.is_dir():
        return packaged
    checkout = source_checkout()
    return checkout / "conf" if checkout is not None else packaged


def data_dir() -> Path:
    """Folder holding the data sets (`covid-cxr/`, `lungs/`, ...): $COVIDSEG_DATA_DIR, else `../shared/data`
    beside a source checkout, else `data/` under the current directory."""
    env = os.environ.get("COVIDSEG_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    checkout = source_checkout()
    if checkout is not None:
        return (checkout.parent / "shared" / "data").resolve()
    return Path.cwd() / "data"


def data_dir_origin() -> str:
    """Why data_dir() is what it is, for error messages about a missing data set."""
    if os.environ.get("COVIDSEG_DATA_DIR"):
        return "from COVIDSEG_DATA_DIR"
    checkout = source_checkout()
    if checkout is not None:
        return f"the default beside the source checkout {checkout}"
    return "the default for an installed package: data/ under the current directory"


def missing_data_hint() -> str:
    """The end of every 'data set not found' message: both ways to point covidseg at the data."""
    return (
        f"Give data.root=<dataset folder>, or set COVIDSEG_DATA_DIR to the folder holding the data sets "
        f"(the data folder now is {data_dir()}, {data_dir_origin()})."
    )


CONF_DIR = _conf_dir()


def cache_dir() -> Path:
    """Decoded-image and mask cache: $COVIDSEG_CACHE_DIR, else ~/.cache/covidseg. Safe to delete."""
    env = os.environ.get("COVIDSEG_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "covidseg"


def log_dir() -> Path:
    """Where runs and sweeps are written: $COVIDSEG_LOG_DIR, else `logs/` under the current directory.

    Resolved without Hydra's runtime config: Hydra resolves `hydra.sweep.dir` before it sets
    `hydra.runtime.cwd`, so an interpolation of the latter broke every multirun without a sweep dir.
    """
    env = os.environ.get("COVIDSEG_LOG_DIR")
    return Path(env).expanduser().absolute() if env else Path.cwd() / "logs"


# covidseg-train-segmenter's task_name: its runs are <log dir>/segmenter/runs/<date>
SEGMENTER_TASK = "segmenter"
_DEFAULT_SEGMENTERS: dict[str, str] = {}  # log dir -> the segmenter the default chose in this process


def _segmenter_folders(log_dir: str | Path) -> list[Path]:
    """Where segmenter runs that can be the default live: segmenter/default/ and segmenter/runs/<date>/."""
    root = Path(log_dir) / SEGMENTER_TASK
    return [root / "default", *sorted((root / "runs").glob("*"))]


def segmenter_runs(log_dir: str | Path) -> list[Path]:
    """The finished segmenter runs under `log_dir`, newest first: `segmenter/runs/<date>/` (what
    covidseg-train-segmenter writes by default) and `segmenter/default/` (where `make segmenter` and older
    versions put it). Finished: checkpoints/best.ckpt and a metrics.json with the test Dice, which a run
    writes once it has tested its best checkpoint (an interrupted or running one has none); newest: by
    that metrics.json's time. Sweeps (`segmenter/multiruns/`) are comparisons: pick one of their jobs
    explicitly."""
    found = []
    for run in _segmenter_folders(log_dir):
        metrics = run / layout.METRICS
        try:
            finished = "test/dice" in json.loads(metrics.read_text())
        except (OSError, ValueError):  # absent, being written, or not ours
            continue
        if finished and (run / layout.CHECKPOINTS / layout.BEST).is_file():
            found.append((metrics.stat().st_mtime_ns, run))
    return [run for _, run in sorted(found, key=lambda item: item[0], reverse=True)]


def default_segmenter_ckpt(log_dir: str | Path) -> str:
    """`${covidseg.segmenter_ckpt:${paths.log_dir}}`, segmenter.ckpt_path's default: best.ckpt of the newest
    finished segmenter run under `log_dir` (segmenter_runs), else a path under segmenter/no-finished-run/
    that does not exist, so that the error says how to make one: an unfinished run's best.ckpt (still
    training, interrupted) is never used by default (a warning names it).

    Chosen once per process and log folder: the jobs of a sweep run by one process all get the segmenter the
    first one got, also when another segmenter finishes meanwhile. (The classifier records the segmenter's
    path and SHA-1 in its checkpoint, so later evaluation and prediction use that one.)"""
    key = str(log_dir)
    if key not in _DEFAULT_SEGMENTERS:
        runs = segmenter_runs(log_dir)
        if not runs:  # not kept: a segmenter trained later in this process is found then
            for unfinished in _segmenter_folders(log_dir):
                if (unfinished / layout.CHECKPOINTS / layout.BEST).is_file():
                    log.warning(
                        "%s has a best.ckpt but no metrics.json with test/dice (still training, or "
                        "interrupted): not used as the default segmenter. Let it finish, or give "
                        "segmenter.ckpt_path=<its best.ckpt> to use it anyway.",
                        unfinished,
                    )
            return str(Path(log_dir) / SEGMENTER_TASK / "no-finished-run" / layout.BEST)
        _DEFAULT_SEGMENTERS[key] = str(runs[0] / layout.CHECKPOINTS / layout.BEST)
    return _DEFAULT_SEGMENTERS[key]


def missing_segmenter_hint() -> str:
    """The end of every 'no segmenter' message: the command that makes one, installed or in a checkout."""
    return (
        "Train one with `covidseg-train-segmenter` (`make segmenter` in a source checkout): "
        f"segmenter.ckpt_path defaults to the newest finished run under {log_dir() / SEGMENTER_TASK} "
        "(runs/<date>/ or default/). "
        "Or give segmenter.ckpt_path=<segmenter run>/checkpoints/best.ckpt."
    )


def one_or_list(one: str | None, many: list[str] | None) -> list[str] | None:
    """`${covidseg.one_or_list:${data.root},[...]}`: a single value given (data.root=<folder>) replaces the
    config's default list (data.roots), so an option that took one value keeps its meaning beside a list."""
    return [one] if one is not None else (None if many is None else list(many))


def register_resolvers() -> None:
    """Make `${covidseg.data_dir:}`, `${covidseg.cache_dir:}`, `${covidseg.log_dir:}`,
    `${covidseg.one_or_list:...}` and `${covidseg.segmenter_ckpt:<log dir>}` usable in the Hydra configs."""
    from omegaconf import OmegaConf

    for name, folder in (("data_dir", data_dir), ("cache_dir", cache_dir), ("log_dir", log_dir)):
        if not OmegaConf.has_resolver(f"covidseg.{name}"):
            OmegaConf.register_new_resolver(f"covidseg.{name}", lambda folder=folder: str(folder()))
    if not OmegaConf.has_resolver("covidseg.one_or_list"):
        OmegaConf.register_new_resolver("covidseg.one_or_list", one_or_list)
    if not OmegaConf.has_resolver("covidseg.segmenter_ckpt"):
        OmegaConf.register_new_resolver("covidseg.segmenter_ckpt", default_segmenter_ckpt)
