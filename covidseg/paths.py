"""Where configs, data, caches and logs live; every location can be overridden by an environment variable.

covidseg may run from a source checkout (`make install`, editable) or from a wheel in any site-packages,
so only the configs are found relative to this file (they ship inside the package); data, caches and
logs default to places that do not depend on where the package is installed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


def one_or_list(one: str | None, many: list[str] | None) -> list[str] | None:
    """`${covidseg.one_or_list:${data.root},[...]}`: a single value given (data.root=<folder>) replaces the
    config's default list (data.roots), so an option that took one value keeps its meaning beside a list."""
    return [one] if one is not None else (None if many is None else list(many))


def register_resolvers() -> None:
    """Make `${covidseg.data_dir:}`, `${covidseg.cache_dir:}`, `${covidseg.log_dir:}` and
    `${covidseg.one_or_list:...}` usable in the Hydra configs."""
    from omegaconf import OmegaConf

    for name, folder in (("data_dir", data_dir), ("cache_dir", cache_dir), ("log_dir", log_dir)):
        if not OmegaConf.has_resolver(f"covidseg.{name}"):
            OmegaConf.register_new_resolver(f"covidseg.{name}", lambda folder=folder: str(folder()))
    if not OmegaConf.has_resolver("covidseg.one_or_list"):
        OmegaConf.register_new_resolver("covidseg.one_or_list", one_or_list)
