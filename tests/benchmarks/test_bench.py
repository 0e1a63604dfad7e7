"""benchmarks.generate_images makes data sets covidseg loads; benchmarks.bench's set-up section runs.

The speeds benchmarks.bench prints are not checked (it asserts nothing by design): only that it measures and
reports what it claims to, on a tiny generated data set.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks import bench_data
from covidseg.data.datamodule import CXRDataModule
from tests.conftest import REPO

# Benchmarks are slow by nature: make bench runs these, make test leaves them out (pyproject.toml addopts).
pytestmark = pytest.mark.bench


def generate(out: Path, n: int, size: int, seed: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.generate_images", "--n", str(n), "--size", str(size)]
    return subprocess.run(
        [*command, "--out", str(out), "--seed", str(seed), "--workers", "2"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )


def test_generated_data_set_loads_split_by_patient(tmp_path):
    root = tmp_path / "gen"
    generate(root, 24, 64)
    table = pd.read_csv(root / "metadata.csv")
    assert list(table.columns) == ["path", "label", "patient_id", "source", "view"]
    assert sorted(table["label"].unique()) == ["covid", "normal"]
    assert table.groupby("patient_id").size().max() > 1  # several images per patient
    image = np.asarray(Image.open(root / table["path"][0]))
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert 20 < image.std() < 100  # an image with structure, neither flat nor noise only

    dm = CXRDataModule(root=str(root), image_size=32, cache_dir=str(tmp_path / "cache"), limit=None)
    dm.setup()
    assert sum(dm.stats[f"n_{s}"] for s in ("train", "val", "test")) == 24
    assert dm.stats["n_skipped_images"] == 0
    assert dm.class_counts("train")[0] > 0 and dm.class_counts("train")[1] > 0


def test_generator_is_deterministic_and_idempotent(tmp_path):
    generate(tmp_path / "a", 12, 48, seed=3)
    first = tmp_path / "a" / "images" / "covid" / "000003.png"
    stamp = first.stat().st_mtime_ns
    again = generate(tmp_path / "a", 12, 48, seed=3)
    assert "0 written, 12 already there" in again.stdout
    assert first.stat().st_mtime_ns == stamp
    generate(tmp_path / "b", 12, 48, seed=3)
    generate(tmp_path / "c", 12, 48, seed=4)
    other = tmp_path / "b" / "images" / "covid" / "000003.png"
    assert first.read_bytes() == other.read_bytes()
    assert first.read_bytes() != (tmp_path / "c" / "images" / "covid" / "000003.png").read_bytes()
    assert not list((tmp_path / "a").rglob("*.tmp"))


def test_bench_setup_section_writes_its_numbers(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--sections", "setup", "--setup-n", "24"]
    options = ["--setup-size", "64", "--setup-compare-size", "0", "--setup-image-size", "32"]
    result = subprocess.run(
        [*command, *options, "--work-dir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| Set-up, cold cache | N=24, 64² PNGs" in result.stdout
    assert "Estimate for 112,120 images (extrapolated)" in result.stdout
    results = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "gpu"} <= set(results["machine"])
    rows = results["setup"]
    assert [r["cache"] for r in rows] == ["cold", "warm"]
    for row in rows:
        assert row["n"] == 24 and row["source_size"] == 64
        assert row["ms_per_image"] > 0 and row["peak_rss_anon_mb"] > 0 and row["peak_rss_mb"] > 0
        assert abs(row["ms_per_image"] - 1000 * row["setup_seconds"] / 24) < 1e-6
    assert {"setup_cold_seconds", "setup_warm_seconds"} <= set(results["extrapolation"])


def test_bench_measures_a_bare_loops_memory_floor():
    """The reference row of the rss section: a real training subprocess, its peak RssAnon polled from outside,
    and more memory for a larger batch (activations)."""
    small, large = bench_data.bare_rss(64, 1), bench_data.bare_rss(256, 16)
    assert small["image_size"] == 64 and small["batch_size"] == 1 and small["env"] == {}
    assert 0 < small["peak_rss_anon_mb"] <= small["peak_rss_mb"]
    assert large["peak_rss_anon_mb"] > small["peak_rss_anon_mb"] + 100
    assert large["ms_per_step"] > small["ms_per_step"] > 0
    if platform.libc_ver()[0] == "glibc":  # the setting --rss-low-memory-malloc measures is glibc's
        low = bench_data.bare_rss(256, 16, bench_data.LOW_MEMORY_MALLOC)
        assert low["env"] == bench_data.LOW_MEMORY_MALLOC
        assert low["peak_rss_anon_mb"] < large["peak_rss_anon_mb"] - 100  # here: 1.03 vs 1.28-1.33 GB


def test_hook_timers_time_a_real_run(tmp_path):
    """benchmarks.hook_timers (the per-hook GPU timings of docs/performance.md) runs covidseg-train and times
    each hook."""
    run = tmp_path / "run"
    overrides = ["data.limit=40", "data.image_size=32", "trainer.max_epochs=2", "trainer=cpu", "logger=none"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.hook_timers", *overrides, f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = {line.split(" n=")[0].strip(): line for line in result.stdout.splitlines() if " n=" in line}
    assert "Classifier.on_validation_epoch_end" in lines and "validation / test loop" in lines
    assert " n=   2 " in lines["Classifier.on_train_epoch_end"]  # once per epoch
    assert "AtomicCheckpointIO.save_checkpoint (training thread)" in lines
    assert (run / "metrics.json").is_file()
