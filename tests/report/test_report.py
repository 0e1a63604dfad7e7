"""covidseg-report on synthetic sweep folders: folds pooled, external sets, intervals (no training).

The jobs here have no checkpoint: lung energy is NaN with a warning and the CAM gallery is left out,
which is how the report degrades on a sweep whose checkpoints were deleted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from covidseg import stats
from covidseg.errors import UserError
from covidseg.models.metrics import METRIC_NAMES
from covidseg.report import build_report
from covidseg.report.collect import collect_jobs
from covidseg.report.pooling import internal_tables

N_PATIENTS = 45  # patients 0..14 have two images: 60 images
CLASSES = ["normal", "covid"]


def dataset() -> pd.DataFrame:
    rows = []
    for p in range(N_PATIENTS):
        label = "covid" if p % 3 == 0 else "normal"
        for k in range(2 if p < 15 else 1):
            rows.append({"path": f"images/{label}/p{p}_{k}.png", "label": label, "patient_id": f"pat{p}"})
    frame = pd.DataFrame(rows)
    frame["target"] = (frame["label"] == "covid").astype(int)
    return frame


def predictions(
    images: pd.DataFrame, backbone: str, input_: str, seed: int, skill: float = 0.3
) -> pd.DataFrame:
    """Noisy but better-than-chance probabilities; segmented models a little better."""
    rng = np.random.default_rng([seed, len(input_), len(images), len(backbone)])
    signal = (skill + (0.1 if input_ == "segmented" else 0.0)) * (2 * images["target"].to_numpy() - 1)
    prob = np.clip(0.5 + signal + rng.normal(0, 0.25, len(images)), 0.01, 0.99)
    return images.assign(prob_normal=1 - prob, prob_covid=prob)


def metrics_of(pred: pd.DataFrame) -> dict:
    y, p = pred["target"].to_numpy(), pred["prob_covid"].to_numpy()
    return {name: stats.BINARY_METRICS[name](y, p) for name in METRIC_NAMES}


def write_job(
    sweep: Path,
    index: int,
    backbone: str,
    input_: str,
    seed: int,
    test: pd.DataFrame | None,
    fold: int | None = None,
    folds: int | None = None,
    external: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """A job folder as covidseg-train leaves it (no checkpoint); test=None: a job that failed."""
    job = sweep / str(index)
    (job / ".hydra").mkdir(parents=True)
    data = {"input": input_, "classes": CLASSES, "image_size": 64, "folds": folds, "fold": fold or 0}
    data["split_ratios"] = {"train": 0.7, "val": 0.1, "test": 0.2}
    cfg = {"seed": seed, "model": {"backbone": backbone}, "data": data, "trainer": {"max_epochs": 2}}
    OmegaConf.save(OmegaConf.create(cfg), job / ".hydra" / "config.yaml")
    if test is None:
        (job / "FAILED.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))
        return job
    pred = predictions(test, backbone, input_, seed * 10 + (fold or 0))
    pred.to_csv(job / "predictions.csv", index=False)
    n_total = len(dataset())
    metrics = {f"test/{k}": v for k, v in metrics_of(pred).items()}
    metrics.update(
        {"test/confusion": [[1, 0], [0, 1]], "classes": CLASSES, "folds": folds, "fold": fold},
        n_test=len(pred),
        n_val=5,
        n_train=n_total - len(pred) - 5,
        patients_test=int(pred["patient_id"].nunique()),
    )
    for name, images in (external or {}).items():
        ext = predictions(images, backbone, input_, seed * 10 + (fold or 0) + 100, skill=0.1)
        ext.to_csv(job / f"predictions_{name}.csv", index=False)
        metrics.update({f"external/{name}/{k}": v for k, v in metrics_of(ext).items()})
        metrics[f"external/{name}/n"] = len(ext)
        metrics["external_sets"] = {name: f"/data/{name}"}
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "csv").mkdir()
    curves = pd.DataFrame({"epoch": [0, 1], "train/acc": [0.6, 0.7], "val/acc": [0.6, 0.8]})
    curves.assign(**{"train/loss": [0.7, 0.5], "val/loss": [0.7, 0.6]}).to_csv(job / "csv" / "metrics.csv")
    return job


def fold_of(images: pd.DataFrame, k: int) -> np.ndarray:
    """Patient-level folds of both classes: patients 3j..3j+2 (one covid, two normal) go to fold j mod k."""
    return images["patient_id"].str[3:].astype(int).to_numpy() // 3 % k


def external_set() -> pd.DataFrame:
    rows = [
        {
            "path": f"ext/{i}.png",
            "label": CLASSES[i % 2],
            "patient_id": f"e{i // 2}",
            "source": "AB"[i % 4 // 2],
        }
        for i in range(24)
    ]
    return pd.DataFrame(rows).assign(target=lambda f: (f["label"] == "covid").astype(int))


def fold_sweep(sweep: Path, k: int = 3, skip: tuple = (), external: bool = False) -> Path:
    images, index = dataset(), 0
    for input_ in ("raw", "segmented"):
        for fold in range(k):
            if (input_, fold) in skip:
                continue
            test = images[fold_of(images, k) == fold]
            ext = {"ext": external_set()} if external else None
            write_job(sweep, index, "resnet18", input_, 0, test, fold=fold, folds=k, external=ext)
            index += 1
    return sweep


def seed_sweep(sweep: Path, external: bool = False, failed: bool = False) -> Path:
    images, index = dataset(), 0
    for backbone in ("resnet18", "densenet121"):
        for input_ in ("raw", "segmented"):
            for seed in range(3):
                patients = np.random.default_rng(seed).permutation(N_PATIENTS)[:15]
                test = images[images["patient_id"].isin([f"pat{p}" for p in patients])]
                ext = {"ext": external_set()} if external else None
                write_job(sweep, index, backbone, input_, seed, test, external=ext)
                index += 1
    if failed:
        write_job(sweep, index, "resnet181", "raw", 0, None)
    return sweep


def test_collect_accepts_a_sweep_over_folds_and_refuses_repeated_jobs(tmp_path):
    jobs = collect_jobs(fold_sweep(tmp_path / "sweep"))
    assert len(jobs) == 6 and sorted(jobs["fold"]) == [0, 0, 1, 1, 2, 2] and set(jobs["folds"]) == {3}
    write_job(tmp_path / "sweep", 6, "resnet18", "raw", 0, dataset().iloc[:5], fold=1, folds=3)
    with pytest.raises(UserError, match=r"jobs \['1', '6'\] share backbone/input/seed/fold"):
        collect_jobs(tmp_path / "sweep")


def test_pooled_folds_test_every_image_exactly_once(tmp_path):
    jobs = collect_jobs(fold_sweep(tmp_path / "sweep"))
    pooled = internal_tables(jobs, "resnet18", "segmented")
    table = pooled.tables[0]
    assert sorted(table["path"]) == sorted(dataset()["path"]) and pooled.jobs[0] == ["3", "4", "5"]
    report = build_report(tmp_path / "sweep", n_boot=200).read_text()
    assert "60 images, 45 patients, each tested exactly once" in report
    assert "pooled out-of-fold predictions" in report.split("## Methods")[1]
    assert "± the std of the folds' own test metrics" in report and "200 resamples" in report
    # paired t over the 3 folds; the bootstrap pools the one seed's 45 patients
    rows = table_rows(report, "### Compared − raw")
    assert len(rows) == len(METRIC_NAMES) and all(r.count("[") == 2 for r in rows)  # bootstrap and t
    compared = pd.read_csv(tmp_path / "sweep" / "comparisons.csv")
    assert set(compared["t_runs"]) == {3} and set(compared["paired_tables"]) == {1}
    assert set(compared["patients"].astype(str)) == {"45"}
    # the pooled accuracy is that of the stacked predictions, not a mean over folds
    row = next(line for line in report.splitlines() if line.startswith("| resnet18 | segmented |"))
    pooled_acc = metrics_of(predictions_of(tmp_path / "sweep", [3, 4, 5]))["acc"]
    assert row.split("|")[5].strip().startswith(f"{pooled_acc:.3f} ±")


def predictions_of(sweep: Path, jobs: list[int]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(sweep / str(j) / "predictions.csv") for j in jobs])


def test_a_missing_or_failed_fold_is_a_clear_error(tmp_path):
    fold_sweep(tmp_path / "missing", skip=(("segmented", 1),))
    with pytest.raises(UserError, match=r"resnet18 / segmented / seed 0: .*no job for fold\(s\) \[1\]"):
        build_report(tmp_path / "missing", n_boot=20)
    # the jobs are still listed in results.csv before the report stops
    assert len(pd.read_csv(tmp_path / "missing" / "results.csv")) == 5
    sweep = fold_sweep(tmp_path / "failed")
    for name in ("metrics.json", "predictions.csv"):
        (sweep / "4" / name).unlink()
    with pytest.raises(UserError, match=r"fold 1 \(job 4\) did not finish"):
        build_report(sweep, n_boot=20)


def test_an_image_tested_by_two_folds_is_a_clear_error(tmp_path):
    sweep = fold_sweep(tmp_path / "sweep")
    extra = pd.read_csv(sweep / "0" / "predictions.csv").iloc[:1]
    fold1 = pd.read_csv(sweep / "1" / "predictions.csv")
    pd.concat([fold1, extra]).to_csv(sweep / "1" / "predictions.csv", index=False)
    first = extra["path"].iloc[0]
    with pytest.raises(
        UserError, match=rf"1 image\(s\) were tested by more than one fold, e.g. {first} by jobs \['0', '1'\]"
    ):
        build_report(sweep, n_boot=20)


def table_rows(report: str, heading: str) -> list[str]:
    """The body rows of the first table after `heading`."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start + 2 : end]


def test_report_without_folds_or_external_sets(tmp_path):
    sweep = seed_sweep(tmp_path / "sweep", failed=True)
    text = build_report(sweep, n_boot=200).read_text()
    assert "External" not in text and not (sweep / "external_auroc.png").exists()
    assert "200 resamples" in text and "± the std over seeds" in text
    rows = table_rows(text, "## Internal test set")
    assert rows[0].split("|")[1:4] == [" resnet18 ", " raw ", " 3 "] and len(rows) == 4
    for row in rows:
        values = [float(v) for v in re.findall(r"-?\d+\.\d+", "|".join(row.split("|")[4:]))]
        assert len(values) == 4 * len(METRIC_NAMES) and all(0 <= v <= 1 for v in values), row
        assert row.rstrip(" |").endswith("–")  # no checkpoint: no lung energy
    # the point estimate is the mean over seeds of each job's logged metric
    results = pd.read_csv(sweep / "results.csv")
    raw = results[(results["backbone"] == "resnet18") & (results["input"] == "raw")]
    assert (
        rows[0]
        .split("|")[4]
        .strip()
        .startswith(f"{raw['test/acc'].mean():.3f} ± {raw['test/acc'].std():.3f}")
    )
    assert "p (paired t)" in text and "p (bootstrap)" in text
    assert "resnet181" in text.split("## Failed jobs")[1]
    assert "_No gallery" in text and not (sweep / "cam_gallery.png").exists()
    assert results["lung_energy"].isna().all() and len(results) == 13
    # jobs from before operating points: the report says so once and keeps the 0.5 metrics
    assert "_No operating point" in text and "Sensitivity" not in text.split("## Calibration")[1]


def test_external_set_sections_and_figure(tmp_path):
    sweep = seed_sweep(tmp_path / "sweep", external=True)
    text = build_report(sweep, n_boot=200).read_text()
    results = pd.read_csv(sweep / "results.csv")
    assert len(results) == 12 and results["external/ext/auroc"].between(0, 1).all()
    section = text.split("## External test set `ext`")[1].split("\n## ")[0]
    assert "all 24 images (12 normal, 12 covid) of 12 patients of `ext` from `/data/ext`" in section
    rows = table_rows(section, "`ext`")
    models = [tuple(c.strip() for c in r.split("|")[1:3]) for r in rows[:4]]
    assert models == [
        ("resnet18", "raw"),
        ("resnet18", "segmented"),
        ("densenet121", "raw"),
        ("densenet121", "segmented"),
    ]
    assert "### Compared − raw on `ext`" in section and section.count("p (bootstrap)") == 1
    sources = table_rows(section, "### Per source on `ext`")
    assert [r.split("|")[3:6] for r in sources[:2]] == [[" A ", " 12 ", " 6 "], [" B ", " 12 ", " 6 "]]
    assert "![external auroc](external_auroc.png)" in text.split("## Internal vs external AUROC")[1]
    with Image.open(sweep / "external_auroc.png") as image:
        image.verify()
    # the external AUROC cell is the mean over the three seeds of the jobs' logged external AUROC
    raw = results[(results["backbone"] == "resnet18") & (results["input"] == "raw")]
    assert rows[0].split("|")[9].strip().startswith(f"{raw['external/ext/auroc'].mean():.3f} ±")


def test_external_set_with_folds_pairs_runs(tmp_path):
    sweep = fold_sweep(tmp_path / "sweep", external=True)
    text = build_report(sweep, n_boot=100).read_text()
    assert "p (paired t)" in text.split("## External test set `ext`")[1].split("\n## ")[0]
    compared = pd.read_csv(sweep / "comparisons.csv")
    assert set(compared.loc[compared["test_set"] == "ext", "t_runs"]) == {3}


def test_three_classes_bootstrap_accuracy_only(tmp_path):
    sweep = tmp_path / "sweep"
    classes = ["normal", "pneumonia", "covid"]
    images = dataset().assign(label=lambda f: [classes[i % 3] for i in range(len(f))])
    images["target"] = [i % 3 for i in range(len(images))]
    for index, (input_, seed) in enumerate([(i, s) for i in ("raw", "segmented") for s in (0, 1)]):
        job = write_job(sweep, index, "resnet18", input_, seed, images.iloc[:30])
        probs = np.random.default_rng(index).dirichlet(np.ones(3), size=30)
        pred = images.iloc[:30].assign(**{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)})
        pred.to_csv(job / "predictions.csv", index=False)
        metrics = json.loads((job / "metrics.json").read_text())
        metrics["test/acc"] = float(np.mean(probs.argmax(axis=1) == pred["target"]))
        (job / "metrics.json").write_text(json.dumps(metrics))
    text = build_report(sweep, n_boot=50).read_text()
    row = table_rows(text, "## Internal test set")[0].split("|")
    assert "<br>[" in row[4] and "<br>" not in row[5]  # accuracy has an interval, precision not
    assert "only accuracy is bootstrapped" in text
    compared = pd.read_csv(sweep / "comparisons.csv")
    assert list(compared.loc[compared["p_bootstrap"].notna(), "metric"]) == ["Accuracy"]
    assert "## Calibration" not in text and not (sweep / "roc_pr.png").exists()
    assert "The AUROC answer needs two classes" in text.split("## Internal test set")[0]


def test_the_report_uses_the_lung_energy_and_cam_arrays_the_jobs_left_without_reloading(tmp_path):
    sweep = seed_sweep(tmp_path / "sweep")
    k, rng = 4, np.random.default_rng(0)
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        energy = {"lung_energy": 0.25, "lung_area": 0.5, "n_images": 8, "max_images": 8}
        (job / "lung_energy.json").write_text(json.dumps(energy))
        images = rng.integers(0, 255, (k, 32, 32), dtype=np.uint8)
        np.savez_compressed(
            job / "cam_gallery.npz",
            k=np.array(k),
            picks=np.arange(k),
            labels=np.array(["covid", "covid", "normal", "normal"]),
            unmasked=images,
            seen=images,
            probs=np.full(k, 0.5, np.float32),
            lung_masks=(images > 128).astype(np.uint8),
            **{m: rng.integers(0, 255, (k, 32, 32), dtype=np.uint8) for m in ("gradcam", "gradcam++")},
        )
    # No job has a checkpoint: any reload would fail and leave a NaN or no gallery.
    text = build_report(sweep, cam_images=k, energy_images=8, n_boot=20).read_text()
    results = pd.read_csv(sweep / "results.csv")
    assert (results["lung_energy"] == 0.25).all() and (results["lung_area"] == 0.5).all()
    assert "](cam_gallery.png)" in text and (sweep / "cam_gallery.png").is_file()
    # other numbers of images than the jobs left are computed again: here they cannot be
    (sweep / "cam_gallery.png").unlink()
    build_report(sweep, cam_images=k + 1, energy_images=16, n_boot=20)
    results = pd.read_csv(sweep / "results.csv")
    assert results["lung_energy"].isna().all() and not (sweep / "cam_gallery.png").exists()
