"""Where data and caches live; every location can be overridden by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def data_dir() -> Path:
    """Folder holding the data sets (`covid-cxr/`, `lungs/`): $COVIDSEG_DATA_DIR, else ../shared/data."""
    env = os.environ.get("COVIDSEG_DATA_DIR")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def cache_dir() -> Path:
    """Decoded-image and mask cache: $COVIDSEG_CACHE_DIR, else ~/.cache/covidseg. Safe to delete."""
    env = os.environ.get("COVIDSEG_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "covidseg"


def register_resolvers() -> None:
    """Make `${covidseg.data_dir:}` and `${covidseg.cache_dir:}` usable in the Hydra configs."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("covidseg.data_dir"):
        OmegaConf.register_new_resolver("covidseg.data_dir", lambda: str(data_dir()))
    if not OmegaConf.has_resolver("covidseg.cache_dir"):
        OmegaConf.register_new_resolver("covidseg.cache_dir", lambda: str(cache_dir()))
