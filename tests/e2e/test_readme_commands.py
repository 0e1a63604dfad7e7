"""The sweep commands the README and the docs print, exactly as printed, from a fresh directory.

A multirun without `hydra.sweep.dir` once shipped broken (the default sweep folder needed Hydra's runtime
config before Hydra had set it) because every test and Makefile target passed one. Here each printed
command composes and launches every job of its sweep in process, with the training itself replaced by a
stand-in (the sweep machinery, config checks and folders are real); one real multirun runs as a user
would, in a fresh process and directory.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import covidseg.train
import covidseg.train_segmenter
from tests.conftest import REPO, make_dataset, run_cli

# Commands the README or the docs must keep printing (so an edit cannot silently drop one from this test).
EXPECTED = (
    "covidseg-train experiment=compare model.backbone=resnet50,efficientnet_b0 seed=0,1,2,3,4",
    "covidseg-train experiment=compare data.input=raw,segmented,lungs_removed",
    "covidseg-train -m model.backbone=resnet18,densenet121 data.input=raw,segmented seed=0,1,2",
    "covidseg-train hparams_search=optuna hydra.sweeper.n_trials=30",
    "covidseg-train -m hparams_search=optuna hydra.sweeper.n_trials=3 debug=tiny",
)


def documented_pages() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def readme_sweeps() -> list[str]:
    """Every covidseg-train command in the bash code blocks of the README and the docs that starts a
    multirun, with continuation lines joined and trailing comments removed; each once, in page order."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in documented_pages())
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] != ["covidseg-train"]:
                continue
            sweep_configs = ("experiment=compare", "hparams_search=")
            if "-m" in words or any(w.startswith(sweep_configs) for w in words):
                commands.append(shlex.join(words))
    return list(dict.fromkeys(commands))


def test_the_readme_still_prints_the_sweeps_tested_here():
    commands = readme_sweeps()
    for expected in EXPECTED:
        assert any(c.startswith(expected) for c in commands), (expected, commands)


def _launch(argv: list[str], main, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("command", readme_sweeps())
def test_a_readme_sweep_starts_every_job_from_a_fresh_directory(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COVIDSEG_LOG_DIR", raising=False)  # the README's default: logs/ here
    jobs = []

    def stand_in(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        jobs.append(out)
        metrics = {cfg.optimized_metric: 0.5} if cfg.get("optimized_metric") else {}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(covidseg.train, "train", stand_in)
    _launch(shlex.split(command), covidseg.train.main, monkeypatch)
    assert jobs, command
    explicit = re.search(r"hydra\.sweep\.dir=(\S+)", command)
    sweep = (tmp_path / explicit.group(1)) if explicit else None
    for job in jobs:
        assert job.is_relative_to(tmp_path / "logs"), job
        assert sweep is None or job.parent == sweep.resolve()
        assert (job / ".hydra" / "config.yaml").is_file()
    n_trials = re.search(r"n_trials=(\d+)", command)
    if n_trials:
        assert len(jobs) == int(n_trials.group(1))


def test_a_segmenter_sweep_starts_without_a_sweep_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COVIDSEG_LOG_DIR", raising=False)
    jobs = []

    def stand_in(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        jobs.append(out)
        (out / "metrics.json").write_text("{}")
        return {}

    # hydra_entry captured the task when the module was imported: build main again with the stand-in.
    main = covidseg.train_segmenter.hydra_entry("train_segmenter", stand_in)
    _launch(["covidseg-train-segmenter", "-m", "seed=0,1"], main, monkeypatch)
    assert [j.name for j in jobs] == ["0", "1"]
    assert all(j.parent.parent == tmp_path / "logs" / "segmenter" / "multiruns" for j in jobs), jobs


@pytest.mark.slow
def test_a_plain_multirun_trains_from_a_fresh_directory(tmp_path):
    """The command of the bug report, as a user types it, in a fresh process and folder."""
    data = tmp_path / "data"
    make_dataset(data / "covid-cxr", {"normal": 16, "covid": 16})
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = run_cli(
        "covidseg-train",
        "-m",
        "seed=0",
        "debug=fast",
        "logger=none",
        "report.energy_images=0",
        "report.cam_images=0",
        cwd=fresh,
        env={"COVIDSEG_LOG_DIR": "", "COVIDSEG_DATA_DIR": str(data)},
    )
    assert "1 of 1 job(s) finished, 0 failed" in result.stdout, result.stdout
    (job,) = (fresh / "logs" / "train" / "multiruns").glob("*/0")
    assert (job / "metrics.json").is_file()
