"""segmenter.ckpt_path's default finds what covidseg-train-segmenter writes, installed or in a checkout, and a
missing segmenter's message names the command that makes one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from covidseg.errors import UserError
from covidseg.masks import MaskSource
from covidseg.paths import CONF_DIR, default_segmenter_ckpt, register_resolvers, segmenter_runs


def _run(folder: Path, finished: bool = True, mtime: int | None = None, best: bool = True) -> Path:
    """A run folder as covidseg-train-segmenter leaves it (finished: a metrics.json with test/dice)."""
    (folder / "checkpoints").mkdir(parents=True)
    if best:
        (folder / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    if finished:
        metrics = folder / "metrics.json"
        metrics.write_text(json.dumps({"test/dice": 0.9}))
        if mtime is not None:
            os.utime(metrics, ns=(mtime, mtime))
    return folder


def test_the_newest_finished_run_is_found_and_unfinished_ones_are_not(tmp_path):
    root = tmp_path / "segmenter"
    assert segmenter_runs(tmp_path) == []
    old = _run(root / "default", mtime=1_000_000_000)  # `make segmenter`, or an older version's default
    new = _run(root / "runs" / "2025-01-02_10-00-00", mtime=3_000_000_000)
    _run(root / "runs" / "2025-01-01_10-00-00", mtime=2_000_000_000)
    _run(root / "runs" / "2025-01-03_10-00-00", finished=False)  # still training, or interrupted
    _run(root / "runs" / "2025-01-04_10-00-00", best=False)
    (root / "runs" / "2025-01-05_10-00-00").mkdir()
    (root / "runs" / "2025-01-05_10-00-00" / "metrics.json").write_text("{not json")
    _run(root / "multiruns" / "2025-01-06_10-00-00" / "0", mtime=9_000_000_000)  # a sweep: chosen explicitly
    assert segmenter_runs(tmp_path) == [new, root / "runs" / "2025-01-01_10-00-00", old]


def test_the_default_is_chosen_once_per_process_and_never_an_unfinished_run(tmp_path, caplog):
    fallback = tmp_path / "segmenter" / "no-finished-run" / "best.ckpt"
    assert default_segmenter_ckpt(tmp_path) == str(fallback)  # nothing yet: the error names this path
    # `make segmenter` still training (or interrupted): its best.ckpt exists, but it is not used
    _run(tmp_path / "segmenter" / "default", finished=False)
    assert default_segmenter_ckpt(tmp_path) == str(fallback) and not fallback.exists()
    assert "segmenter/default has a best.ckpt but no metrics.json" in caplog.text
    first = _run(tmp_path / "segmenter" / "runs" / "a", mtime=1_000_000_000)
    assert default_segmenter_ckpt(tmp_path) == str(first / "checkpoints" / "best.ckpt")
    _run(tmp_path / "segmenter" / "runs" / "b", mtime=2_000_000_000)
    # A sweep's later jobs keep the first job's segmenter, also when a newer one finished meanwhile.
    assert default_segmenter_ckpt(tmp_path) == str(first / "checkpoints" / "best.ckpt")


def _compose(name: str, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


def test_covidseg_train_segmenter_writes_where_the_classifiers_default_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDSEG_LOG_DIR", str(tmp_path))
    cfg = _compose("train_segmenter")
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir"))  # <log dir>/segmenter/runs/<date>
    assert run_dir.parent == tmp_path / "segmenter" / "runs"
    assert cfg.segmenter.ckpt_path is None  # a segmenter run records no other segmenter
    _run(run_dir)
    train = _compose("train")
    assert train.segmenter.ckpt_path == str(run_dir / "checkpoints" / "best.ckpt")


def test_a_missing_segmenter_names_the_installed_command(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDSEG_LOG_DIR", str(tmp_path / "logs"))
    with pytest.raises(
        UserError, match=r"covidseg-train-segmenter.*newest finished run under .*logs/segmenter"
    ):
        MaskSource(tmp_path / "none.ckpt", tmp_path)
