"""resume=true: a killed run continues from last.ckpt and ends exactly as an uninterrupted one (CPU), through
the console script (its pieces in process: tests/runs/test_resume.py)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from covidseg.checkpoints import read_checkpoint
from tests.conftest import kill_when_saved, read_metrics, run_cli

TINY = [
    "data.limit=60", "data.image_size=64", "data.batch_size=16", "logger=csv", "callbacks=none",
    "model.backbone=test_resnet",
]  # fmt: skip
TEST_FLOATS = ["test/acc", "test/precision", "test/recall", "test/specificity", "test/f1", "test/auroc"]


# -- as a user runs it: kill -9, then resume=true (real trainings, one subprocess each) ------------------


EPOCHS = 4
RUN = [*TINY, "callbacks=early_stopping", f"trainer.max_epochs={EPOCHS}"]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, covid_cxr) -> tuple[Path, Path]:
    """(an uninterrupted run, the same run SIGKILLed after its second epoch) with the same seed."""
    base = tmp_path_factory.mktemp("resume")
    run_cli("covidseg-train", *RUN, f"hydra.run.dir={base / 'whole'}")
    killed = base / "killed"
    epoch = kill_when_saved([*RUN, f"hydra.run.dir={killed}"], killed / "checkpoints" / "last.ckpt", 1)
    assert epoch < EPOCHS - 1 and not (killed / "metrics.json").exists()
    return base / "whole", killed


@pytest.mark.slow
def test_a_killed_run_resumed_ends_with_the_uninterrupted_runs_test_metrics(killed_run):
    whole, killed = killed_run
    result = run_cli("covidseg-train", *RUN, "resume=true", f"hydra.run.dir={killed}")
    assert "continuing" in result.stdout + result.stderr
    expected, resumed = read_metrics(whole), read_metrics(killed)
    for key in [*TEST_FLOATS, "test/loss", "test/confusion", "best_epoch", "val/single_class_epochs"]:
        assert resumed[key] == expected[key], key
    assert resumed["epochs_run"] == EPOCHS and 1 <= resumed["resumed_at_epoch"] < EPOCHS
    assert (killed / "predictions.csv").read_text() == (whole / "predictions.csv").read_text()
    # Not only the best epoch (which may predate the kill): the last weights and every epoch's val/loss.
    last = [read_checkpoint(run / "checkpoints" / "last.ckpt", "")["state_dict"] for run in (whole, killed)]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    # the curves hold every epoch once: the killed attempt's rows up to its checkpoint, then the resumed ones
    assert _val_losses(killed) == _val_losses(whole) and len(_val_losses(whole)) == EPOCHS


def _val_losses(run: Path) -> list[tuple[str, str]]:
    with (run / "csv" / "metrics.csv").open() as file:
        return [(row["epoch"], row["val/loss"]) for row in csv.DictReader(file) if row["val/loss"]]


@pytest.mark.slow
def test_resume_with_another_override_stops_naming_it_and_touches_nothing(killed_run, cli_refused):
    _, killed = killed_run
    before = (killed / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    cli_refused(
        "covidseg-train",
        *RUN,
        "resume=true",
        "model.optimizer.lr=0.01",
        f"hydra.run.dir={killed}",
        expected="model.optimizer.lr: 0.002 then, 0.01 now",
    )
    assert (killed / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_resume_without_last_ckpt_stops_saying_so(tmp_path, cli_refused):
    cli_refused(
        "covidseg-train",
        "debug=fast",
        "logger=none",
        "resume=true",
        f"hydra.run.dir={tmp_path}",
        expected=re.escape(f"{tmp_path}/checkpoints/last.ckpt does not exist"),
    )
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_a_relaunched_sweep_skips_the_finished_job_and_resumes_the_killed_one(tmp_path, covid_cxr, cli):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.max_epochs=3", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    kill_when_saved(args, sweep / "1" / "checkpoints" / "last.ckpt", 0)
    finished = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    assert not (sweep / "1" / "metrics.json").exists()
    output = cli("covidseg-train", *args, "resume=true")
    assert "2 of 2 job(s) finished" in output and "has finished (metrics.json), nothing to do" in output
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == finished  # not trained again
    metrics = read_metrics(sweep / "1")
    assert metrics["seed"] == 1 and metrics["epochs_run"] == 3 and metrics["resumed_at_epoch"] >= 1
    # the same sweep folder with other settings is not the same sweep: it stops before touching a job
    output = cli("covidseg-train", *args, "resume=true", "data.batch_size=8", expect=2)
    assert "data.batch_size: 16 then, 8 now" in output, output[-3000:]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == finished
