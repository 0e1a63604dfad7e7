"""A real tiny sweep through the Hydra CLI, then covidseg-report on it."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import run_cli, run_ok


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, tiny_segmenter) -> Path:
    base = tmp_path_factory.mktemp("study")
    sweep = base / "sweep"
    own_cache = {"COVIDSEG_CACHE_DIR": str(base / "cache")}  # so mask-cache counts are this sweep's alone
    # resnet181 is a typo on purpose: that job must fail alone and be reported.
    result = run_cli(
        "covidseg-train",
        "-m",
        "model.backbone=test_resnet,mobilenetv3_small_050,resnet181",
        "data.input=raw,segmented",
        "seed=0",
        "data.image_size=64",
        "data.limit=60",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "logger=wandb",
        "report.energy_images=8",  # what the report below asks for: it reads the jobs' own files
        "report.cam_images=4",
        f"segmenter.ckpt_path={tiny_segmenter}/checkpoints/best.ckpt",
        f"hydra.sweep.dir={sweep}",
        env=own_cache,
        check=False,
    )
    (base / "sweep_output.txt").write_text(f"{result.returncode}\n{result.stdout}")
    run_ok(
        "covidseg-report",
        str(sweep),
        "--n-boot",
        "200",
        "--energy-images",
        "8",
        "--cam-images",
        "4",
        env=own_cache,
    )
    return sweep


@pytest.mark.slow
def test_sweep_runs_every_job_and_failed_ones_do_not_stop_it(tiny_sweep):
    results = pd.read_csv(tiny_sweep / "results.csv")
    assert len(results) == 6
    ok = results[results["status"] == "ok"]
    assert sorted(ok["backbone"].unique()) == ["mobilenetv3_small_050", "test_resnet"] and len(ok) == 4
    for job in ok["dir"]:  # every job logged to W&B (offline), all in the sweep's group
        assert len(list((Path(job) / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert set(ok["group"]) == {tiny_sweep.name}
    failed = results[results["status"] == "failed"]
    assert set(failed["backbone"]) == {"resnet181"} and failed["error"].str.contains("not a timm model").all()
    for column in ["test/acc", "test/f1", "test/auroc"]:
        assert ok[column].between(0, 1).all(), column
    for job in ok["dir"]:  # every finished job measured its own lung energy (raw ones with the segmenter)
        assert json.loads((Path(job) / "lung_energy.json").read_text())["max_images"] == 8
        assert (Path(job) / "cam_gallery.npz").is_file()
    # an all-zero CAM (possible after 2 epochs) has no lung share: NaN, shown as "–"
    assert ok["lung_energy"].dropna().between(0, 1).all() and ok["lung_energy"].notna().sum() >= 2
    segmented = ok[ok["input"] == "segmented"]
    # the masks for the sweep were predicted once: only the first segmented job missed the cache, and not
    # for the test images whose masks a raw job before it had predicted to measure its lung energy
    second, first = sorted(segmented["mask_cache_misses"])
    total = segmented["n_train"].iloc[0] + segmented["n_val"].iloc[0] + segmented["n_test"].iloc[0]
    assert second == 0 and total - segmented["n_test"].iloc[0] <= first <= total


@pytest.mark.slow
def test_a_sweep_with_failed_jobs_ends_with_a_summary_and_exit_code_1(tiny_sweep):
    code, output = (tiny_sweep.parent / "sweep_output.txt").read_text().split("\n", 1)
    assert code == "1"
    assert f"Sweep {tiny_sweep}: 4 of 6 job(s) finished, 2 failed." in output
    assert (
        len(re.findall(r"job \d failed: UserError: model.backbone='resnet181' is not a timm model", output))
        == 2
    )


@pytest.mark.slow
def test_report_has_one_row_per_backbone_and_input_and_valid_figures(tiny_sweep):
    text = (tiny_sweep / "report.md").read_text()
    assert text.index("## Summary") < text.index("## Internal test set") < text.index("## Methods")
    table = text.split("## Internal test set")[1].split("##")[0]
    rows = [
        line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Backbone")
    ]
    assert sorted((r.split("|")[1].strip(), r.split("|")[2].strip()) for r in rows) == [
        ("mobilenetv3_small_050", "raw"),
        ("mobilenetv3_small_050", "segmented"),
        ("test_resnet", "raw"),
        ("test_resnet", "segmented"),
    ]
    for row in rows:
        values = [float(v) for v in re.findall(r"-?\d+\.\d+", "|".join(row.split("|")[4:]))]
        assert values and all(0.0 <= v <= 1.0 for v in values), row
    assert "resnet181" in text.split("## Failed jobs")[1]
    # one seed: the paired patient bootstrap and DeLong, no seed-level t-test
    assert "p (bootstrap)" in text and "p (DeLong)" in text and "p (paired t)" not in text
    # the report went to the sweep's W&B group too (offline here)
    assert len(list((tiny_sweep / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert (tiny_sweep / "curves_test_resnet.png").is_file() and (tiny_sweep / "report.html").is_file()
    for name in ["curves.png", "confusion.png", "cam_gallery.png", "roc_pr.png", "calibration.png"]:
        assert f"]({name})" in text, name
        with Image.open(tiny_sweep / name) as image:
            image.verify()
            assert image.size[0] > 200


def test_report_on_a_folder_without_jobs_is_a_clear_error(tmp_path):
    result = run_cli("covidseg-report", str(tmp_path), check=False)
    assert result.returncode == 2 and "holds no job folders" in result.stderr
