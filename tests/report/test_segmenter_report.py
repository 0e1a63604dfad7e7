"""Comparing segmenters: experiment=segmenter_compare, the n_parameters / ms_per_image keys, and the segmenter
report that covidseg-report writes for a covidseg-train-segmenter sweep."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats as sps

from covidseg.data.segmentation import LungMaskDataModule
from covidseg.inference.evaluation import evaluate_segmenter_and_write
from covidseg.models.segmenter import Segmenter
from covidseg.outputs import layout
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.report import build_report
from covidseg.stats import bootstrap_patient_metric
from covidseg.stats.bootstrap import MEAN_OF
from tests.conftest import read_metrics

register_resolvers()
ARCHS = ["Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Linknet"]


def compose_segmenter(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train_segmenter", overrides=overrides, return_hydra_config=True)


# -- the experiment ------------------------------------------------------------------------------------------
def test_segmenter_compare_sweeps_architectures_encoders_and_seeds_on_both_mask_sets():
    cfg = compose_segmenter(["experiment=segmenter_compare"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params["segmenter.arch"].split(",") == ARCHS
    assert params["segmenter.encoder"] == "resnet18" and params["seed"].split(",") == ["0", "1", "2"]
    assert cfg.task_name == "segmenter_compare"
    # the experiment's quick size wins over train_segmenter.yaml's own (it comes after _self_)
    assert cfg.trainer.max_epochs == 8 and cfg.data.image_size == cfg.model.image_size == 128
    assert [Path(r).name for r in cfg.data.roots] == ["lungs", "lungs-covid"]
    assert compose_segmenter([]).trainer.max_epochs == 15  # without it: the default run


@pytest.mark.parametrize("arch", ARCHS)
def test_every_swept_architecture_builds_with_the_default_encoder_at_the_quick_size(arch):
    cfg = compose_segmenter(["experiment=segmenter_compare", f"segmenter.arch={arch}"])
    model = instantiate(cfg.model, _convert_="all")
    size = cfg.data.image_size
    with torch.no_grad():
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 1, size, size)


# -- metrics.json: parameters and speed ---------------------------------------------------------------------
def test_metrics_give_the_parameters_and_the_inference_time_per_test_image(lungs, tmp_path):
    dm = LungMaskDataModule(
        root=str(lungs), image_size=32, batch_size=4, num_workers=0, limit=15, cache_dir=str(tmp_path)
    )
    dm.setup("fit")
    model = Segmenter(encoder="tu-mobilenetv3_small_050", image_size=32)  # untrained: bookkeeping under test
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    metrics = evaluate_segmenter_and_write(trainer, model, dm, tmp_path, None, overlays=0, extra={})
    assert metrics["n_parameters"] == sum(p.numel() for p in model.parameters()) > 1_000_000
    assert metrics["ms_per_image"] == pytest.approx(1000 * model.test_predict_seconds / metrics["n_test"])
    assert 0 < metrics["ms_per_image"] < 60_000
    assert json.loads((tmp_path / "metrics.json").read_text())["ms_per_image"] == metrics["ms_per_image"]


def test_the_patient_bootstrap_of_a_per_image_score_resamples_whole_patients():
    # patient a: three perfect images; patient b: one missed image. Drawing patients, "b twice" (p = 1/4)
    # gives mean Dice 0; drawing images, four misses in a row has p = 1/256, below the 2.5 % quantile.
    table = pd.DataFrame(
        {"path": ["1", "2", "3", "4"], "patient_id": ["a", "a", "a", "b"], "dice": [1.0, 1.0, 1.0, 0.0]}
    )
    boot = bootstrap_patient_metric(table, MEAN_OF + "dice", n_boot=2000, seed=0)
    assert boot["estimate"] == 0.75 and (boot["ci_low"], boot["ci_high"]) == (0.0, 1.0)


# -- the report over a synthetic sweep -----------------------------------------------------------------------
def scores_table(arch: str, seed: int) -> pd.DataFrame:
    """Per-image scores of one job: Unet better on normal lungs, FPN on COVID lungs (of two sources)."""
    rng = np.random.default_rng(100 * seed + len(arch))
    rows = []
    for i in range(10):
        good = 0.97 if arch == "Unet" else 0.90
        rows.append({"set": "normal", "image": f"n{i}.png", "mask": f"n{i}_mask.png", "dice": good})
    for i in range(12):
        good = 0.80 if arch == "Unet" else 0.93
        row = {"set": "covid", "image": f"c{i}.png", "mask": f"c{i}_mask.png", "dice": good}
        rows.append({**row, "patient_id": f"p{i // 2}", "source": "site-a" if i < 6 else "site-b"})
    table = pd.DataFrame(rows)
    table["dice"] = np.clip(table["dice"] + rng.normal(0, 0.03, len(table)), 0, 1)
    table["iou"] = table["dice"] / (2 - table["dice"])
    table["hd95"] = 40 * (1 - table["dice"])
    table["empty_prediction"] = False
    return table


def write_segmenter_job(job: Path, arch: str, seed: int, failed: bool = False) -> None:
    (job / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "segmenter": {"arch": arch, "encoder": "resnet18", "image_size": 128},
        "data": {"image_size": "${segmenter.image_size}"},
        "model": {"_target_": "covidseg.models.segmenter.Segmenter", "arch": "${segmenter.arch}"},
        "trainer": {"max_epochs": 8},
    }
    (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    if failed:
        (job / layout.FAILED).write_text(json.dumps({"error": "RuntimeError: out of memory"}))
        return
    scores = scores_table(arch, seed)
    scores.to_csv(job / "segmentation_scores.csv", index=False)
    metrics = {
        "test/dice": scores["dice"].mean(),
        "arch": arch,
        "encoder": "resnet18",
        "image_size": 128,
        "n_parameters": 14_321_937 if arch == "Unet" else 13_040_961,
        "ms_per_image": 20.0 + seed,
        "train_seconds": 300.0,
        "best_epoch": 7,
    }
    (job / "metrics.json").write_text(json.dumps(metrics))


def table_rows(report: str, heading: str) -> dict[str, list[str]]:
    """The rows of the table under `heading`, by model: their cells."""
    section = report.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_the_report_of_a_segmenter_sweep_has_intervals_per_population_figures_and_the_best_model(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [(arch, seed) for arch in ("Unet", "FPN") for seed in (0, 1, 2)]
    for n, (arch, seed) in enumerate(jobs):
        write_segmenter_job(sweep / str(n), arch, seed)
    write_segmenter_job(sweep / "6", "Linknet", 0, failed=True)

    report = build_report(sweep, n_boot=300).read_text()

    assert report.startswith("# covidseg segmenter comparison")
    best = re.search(r"Best model by mean Dice per population: (.*)\.\n", report).group(1)
    assert "set normal: **Unet · resnet18**" in best and "set covid: **FPN · resnet18**" in best
    assert "source site-a: **FPN · resnet18**" in best
    for heading in (
        "## all test images",
        "## set normal",
        "## set covid",
        "## source site-a",
        "## source site-b",
    ):
        rows = table_rows(report, heading)
        assert set(rows) == {"Unet · resnet18", "FPN · resnet18"}, heading
        for cells in rows.values():
            assert cells[0] == "3"  # seeds
            assert all("seeds [" in c and "patients [" in c for c in cells[3:6]), (heading, cells)
    # the covid set: 12 images of 6 patients; the normal set has no patient_id (each image its own patient)
    assert table_rows(report, "## set covid")["FPN · resnet18"][1:3] == ["12", "6"]
    assert table_rows(report, "## set normal")["Unet · resnet18"][1:3] == ["10", "10"]

    # the Dice cell: mean over seeds, its std and the Student-t interval over seeds, then the bootstrap
    seed_means = [scores_table("FPN", s).query("set == 'covid'")["dice"].mean() for s in (0, 1, 2)]
    mean, std = np.mean(seed_means), np.std(seed_means, ddof=1)
    half = sps.t.ppf(0.975, 2) * std / math.sqrt(3)
    dice_cell = table_rows(report, "## set covid")["FPN · resnet18"][3]
    assert dice_cell.startswith(f"{mean:.3f} ± {std:.3f}<br>seeds [{mean - half:.3f}, {mean + half:.3f}]")
    low, high = map(float, re.search(r"patients \[([\d.]+), ([\d.]+)\]", dice_cell).groups())
    assert low < mean < high and high - low < 0.1

    assert (sweep / "dice_distribution.png").stat().st_size > 10_000
    assert "![dice distribution](dice_distribution.png)" in report
    # no checkpoints in a synthetic sweep: the galleries are left out, and the report says so
    assert "_No gallery" in report and not list(sweep.glob("worst_cases_*.png"))
    cost = table_rows(report, "## Parameters and speed")
    assert cost["Unet · resnet18"][:2] == ["14.32", "21.0 ± 1.0"]
    failed = report.split("## Failed jobs")[1]
    assert "Linknet" in failed and "out of memory" in failed
    results = pd.read_csv(sweep / "results.csv")
    assert len(results) == 7 and list(results["status"]).count("failed") == 1
    assert set(results["model"].dropna()) == {"Unet · resnet18", "FPN · resnet18", "Linknet · resnet18"}


# -- the real thing, tiny ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_real_segmenter_compare_sweep_and_its_report_with_the_worst_cases(tmp_path, cli):
    sweep = tmp_path / "sweep"
    cli(
        "covidseg-train-segmenter",
        "experiment=segmenter_compare",
        "segmenter.arch=Unet,FPN",
        "segmenter.encoder=tu-test_resnet",
        "seed=0",
        "segmenter.image_size=32",
        "data.limit=12",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "logger=none",
        "overlays=2",
        f"hydra.sweep.dir={sweep}",
    )
    for job in ("0", "1"):
        metrics = read_metrics(sweep / job)
        assert metrics["n_parameters"] > 100_000 and metrics["ms_per_image"] > 0
        assert metrics["image_size"] == 32 and (sweep / job / "config_resolved.yaml").is_file()
    cli("covidseg-report", str(sweep), "--n-boot", "50", "--worst-images", "3")
    report = (sweep / "report.md").read_text()
    assert "Best model by mean Dice per population" in report
    assert {"Unet · tu-test_resnet", "FPN · tu-test_resnet"} == set(table_rows(report, "## set lungs-covid"))
    galleries = sorted(p.name for p in sweep.glob("worst_cases_*.png"))
    assert "worst_cases_set_lungs_covid.png" in galleries and "worst_cases_set_lungs.png" in galleries
    assert all(f"]({name})" in report for name in galleries)
    assert (sweep / "dice_distribution.png").is_file() and len(pd.read_csv(sweep / "results.csv")) == 2
