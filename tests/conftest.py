"""Shared fixtures. Real data comes from $COVIDSEG_DATA_DIR (default ../shared/data)."""

from __future__ import annotations

import importlib
import json
import logging
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
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
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


# Console scripts (pyproject.toml [project.scripts]) and the modules whose `main` they call.
SCRIPT_MODULES = {
    "covidseg-train": "covidseg.train",
    "covidseg-eval": "covidseg.eval",
    "covidseg-train-segmenter": "covidseg.train_segmenter",
    "covidseg-eval-segmenter": "covidseg.eval_segmenter",
    "covidseg-predict": "covidseg.predict",
    "covidseg-export": "covidseg.export",
    "covidseg-report": "covidseg.report",
}


def _logging_state() -> dict[logging.Logger, tuple]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return {
        lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
        for lg in loggers
        if isinstance(lg, logging.Logger)
    }


def _restore_logging(before: dict[logging.Logger, tuple]) -> None:
    """Undo what a command did to logging: Hydra configures it per job (job.log, a console handler on the
    sys.stdout of that moment) and Lightning adds handlers when first imported; left in place they would
    write to a later test's closed capture streams and keep job.log files open."""
    for lg, (handlers, level, propagate, disabled) in {**_logging_state(), **before}.items():
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers[:] = handlers if lg in before else []
        if lg in before:
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled


def run_main(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> int | str | None:
    """Run a console script's `main` in this process, as its command line would (sys.argv, the working
    folder, `env` added to os.environ), without the 4-5 s of imports a subprocess pays; returns its exit code
    (0: it returned). For tests about what a command does; the process boundary itself (exit codes seen by a
    shell, entry points, kills) keeps `run_cli`. An exception other than SystemExit propagates."""
    logging_before = _logging_state()  # before the import: Lightning adds handlers when first imported
    module = importlib.import_module(SCRIPT_MODULES[args[0]])
    argv, folder, environ = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = [args[0], *args[1:]]
    os.environ.update(env or {})
    if cwd is not None:
        os.chdir(cwd)
    GlobalHydra.instance().clear()
    try:
        module.main(list(args[1:])) if args[0] == "covidseg-report" else module.main()
    except SystemExit as stop:
        return stop.code
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # the command's job config is not the next test's
        _restore_logging(logging_before)
        sys.argv = argv
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environ)
    return 0


def run_ok(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """`run_main` for fixtures (any scope): the command must succeed; its output is in the test's capture."""
    code = run_main(*args, cwd=cwd, env=env)
    assert (code or 0) == 0, f"{' '.join(args)} exited {code} (its output is in the captured log above)"


@pytest.fixture
def cli(capfd):
    """``cli("covidseg-train", "debug=tiny", ..., expect=0, cwd=None)``: `run_main` with its output (stdout +
    stderr) returned; fails the test unless the exit code is `expect` (2: a user error)."""

    def run(*args: str, expect: int = 0, cwd: Path | None = None) -> str:
        capfd.readouterr()  # what came before is not this command's
        code = run_main(*args, cwd=cwd)
        out, err = capfd.readouterr()
        output = out + err
        assert (code or 0) == expect, f"{' '.join(args)} exited {code}, expected {expect}:\n{output[-4000:]}"
        return output

    return run


@pytest.fixture
def cli_refused(cli):
    """``cli_refused(*args, expected=regex)``: the in-process `run_cli_refused` (exit 2, one message)."""

    def run(*args: str, expected: str) -> str:
        output = cli(*args, expect=2)
        assert "Traceback" not in output, output[-3000:]
        assert re.search(expected, output), output[-3000:]
        return output

    return run


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
    """A real segmenter run: 24 image/mask pairs at 64 px, 2 epochs, on timm's tiny test_resnet encoder (2.3 M
    parameters with its U-Net, 28 MB checkpoints against resnet18's 14 M / 172 MB): poor masks, real code
    path."""
    run = tmp_path_factory.mktemp("seg") / "run"
    run_cli(
        "covidseg-train-segmenter",
        "segmenter.encoder=tu-test_resnet",
        "data.image_size=64",
        "trainer.max_epochs=2",
        "data.limit=24",
        "data.batch_size=8",
        "logger=csv",
        "overlays=6",
        f"hydra.run.dir={run}",
    )
    return run
