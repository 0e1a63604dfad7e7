"""Shared fixtures. Real data comes from $COVIDSEG_DATA_DIR (default ../shared/data)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covidseg.paths import data_dir

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def isolated_dirs(tmp_path_factory):
    """Caches and logs of the test session go to a temporary folder, never the user's."""
    base = tmp_path_factory.mktemp("covidseg")
    os.environ["COVIDSEG_CACHE_DIR"] = str(base / "cache")
    os.environ["COVIDSEG_LOG_DIR"] = str(base / "logs")
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    yield base


def real_dataset(name: str) -> Path:
    root = data_dir() / name
    if not (root / "metadata.csv").is_file():
        pytest.fail(
            f"Real data not found at {root}: set COVIDSEG_DATA_DIR to the folder holding "
            "covid-cxr/ and lungs/."
        )
    return root


@pytest.fixture(scope="session")
def covid_cxr() -> Path:
    return real_dataset("covid-cxr")


@pytest.fixture(scope="session")
def external_actualmed() -> Path:
    return real_dataset("external-actualmed")


@pytest.fixture(scope="session")
def lungs() -> Path:
    return real_dataset("lungs")


def make_dataset(
    folder: Path, labels: dict[str, int], patients_per_label: int | None = None, size: int = 32, seed: int = 0
) -> Path:
    """A small generated dataset (metadata.csv + PNGs). Two images per patient unless told otherwise."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, n in labels.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            patient = f"{label}-{i // 2 if patients_per_label is None else i % patients_per_label}"
            path = f"{label}/{i}.png"
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / path)
            rows.append({"path": path, "label": label, "patient_id": patient, "site": "generated"})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


def run_cli(
    *args: str,
    check: bool = True,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    """Run a covidseg console script as a user would; output is kept for assertions and failures."""
    command = [str(BIN / args[0]), *args[1:]]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed "
            f"({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def run_cli_refused(*args: str, expected: str, timeout: int = 180) -> str:
    """Run a console script that must stop on a user error: exit code 2, no traceback, and a message matching
    the regular expression `expected`. Returns the output."""
    result = run_cli(*args, check=False, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in result.stderr, output[-3000:]
    assert re.search(expected, output), output[-3000:]
    return output


def _epoch_of(last: Path) -> int | None:
    """The epoch of a completely written last.ckpt, else None (absent, or being written)."""
    try:
        return int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return None


def kill_when_saved(args: list[str], last: Path, epoch: int, timeout: float = 600) -> int:
    """Start covidseg-train with `args`, SIGKILL it as soon as `last` holds `epoch` or a later one; returns
    the epoch found. The process must still be running then (else the test proves nothing)."""
    process = subprocess.Popen(
        [str(BIN / "covidseg-train"), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    read = None  # (mtime, size) of the version read last: a checkpoint of resnet18 + Adam is 130 MB
    try:
        while time.monotonic() < deadline:
            stat = last.stat() if last.is_file() else None
            version = (stat.st_mtime_ns, stat.st_size) if stat else None
            found = _epoch_of(last) if version and version != read else None
            read = version if found is not None else read
            if found is not None and found >= epoch:
                assert process.poll() is None, f"the run ended before it could be killed:\n{process.stderr}"
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return found
            if process.poll() is not None:
                pytest.fail(f"covidseg-train exited ({process.returncode}):\n{process.stderr.read()[-4000:]}")
            time.sleep(0.1)
        pytest.fail(f"no {last} of epoch {epoch} within {timeout} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()
    raise AssertionError("unreachable")


def read_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="session")
def tiny_classifier_run(tmp_path_factory, covid_cxr, external_actualmed) -> Path:
    """A real classifier run shared by the session (debug=tiny: test_resnet, 60 images at 64 px, 2 epochs),
    with an external test set and the csv and offline W&B loggers. Tests only read it: copy it to change
    it."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    run_cli(
        "covidseg-train",
        "debug=tiny",
        "logger=wandb",
        "seed=1",
        f"data.external=[{external_actualmed}]",
        f"hydra.run.dir={run}",
    )
    return run


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory, lungs) -> Path:
    """A real segmenter run: 24 image/mask pairs at 64 px, 2 epochs (poor masks, real code path)."""
    run = tmp_path_factory.mktemp("seg") / "run"
    run_cli(
        "covidseg-train-segmenter",
        "data.image_size=64",
        "trainer.max_epochs=2",
        "data.limit=24",
        "data.batch_size=8",
        "logger=csv",
        "overlays=6",
        f"hydra.run.dir={run}",
    )
    return run
