"""bench.py's training sections: covidseg vs a bare PyTorch loop, sweep overhead, per-backbone speed.

The bare loop is what covidseg's training amounts to without a framework: the same split of the same
images (uint8, one tensor on the device), the same network (timm, 1 channel, random weights), loss
(binary cross-entropy with covidseg's class weighting), optimiser, batch and epochs; every epoch it
shuffles, normalises, trains, then validates on the validation split. Its clock, like covidseg's
train_seconds (trainer.fit), covers the epochs including validation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from covidseg.data.datamodule import CXRDataModule
from covidseg.models.classifier import create_backbone

NO_AUGMENTATION = [
    "data.augment.rotation=0",
    "data.augment.translate=0",
    "data.augment.scale=[1.0,1.0]",
    "data.augment.brightness=0",
    "data.augment.contrast=0",
]
MEAN, STD = 0.5, 0.25  # covidseg's data.mean / data.std
CLASSES = ("normal", "covid")  # data.classes of conf/data/covid_cxr.yaml: target 1 = covid
# The bare loop's child process imports this module as `benchmarks.bench_train` from the repository root.
REPO = Path(__file__).resolve().parents[1]


def run_timed(
    command: list[str], env: dict[str, str], what: str, cwd: Path | None = None
) -> tuple[float, str]:
    """Wall seconds and standard output of one subprocess; a failure stops the bench with the end of its
    output."""
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.stderr.write((result.stdout + result.stderr)[-4000:])
        raise SystemExit(f"bench: {what} failed (exit {result.returncode}); output above.")
    return wall, result.stdout


def covidseg_train(run_dir: Path, overrides: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One `covidseg-train` run into a fresh `run_dir`; returns its metrics.json and the wall time."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "covidseg.train", *overrides, f"hydra.run.dir={run_dir}"]
    wall, _ = run_timed(command, env, " ".join(command))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**metrics, "wall_seconds": wall}


def real_split(root: Path, image_size: int, cache: Path, splits_csv: Path) -> dict[str, Any]:
    """The train and val images of a covidseg run (its splits.csv), decoded as covidseg decodes them."""
    dm = CXRDataModule(
        root=str(root), image_size=image_size, cache_dir=str(cache), classes=["normal", "covid"]
    )
    dm.setup()
    recorded = dict(pd.read_csv(splits_csv, usecols=["path", "split"]).itertuples(index=False))
    table = dm.table
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        rows = table[[recorded.get(p) == split for p in table["path"]]]
        if len(rows) != sum(1 for s in recorded.values() if s == split):
            raise SystemExit(f"bench: the data module's {split} split differs from {splits_csv}.")
        out[split] = (
            torch.from_numpy(_decoded(dm, rows, image_size)),
            torch.tensor([CLASSES.index(label) for label in rows["label"]], dtype=torch.int64),
        )
    return out


def _decoded(dm: CXRDataModule, rows: pd.DataFrame, image_size: int) -> np.ndarray:
    """uint8 (N, S, S) images of `rows` as the data module decoded them, or (should that method go) as PIL
    resizes them: the bare loop's speed does not depend on which."""
    if hasattr(dm, "decoded_images"):
        images = dm.decoded_images(rows)  # an array or an array view on the cache: index it
        return np.asarray(images[np.arange(len(rows))])
    return np.stack(
        [
            np.asarray(Image.open(f).convert("L").resize((image_size, image_size), Image.Resampling.BOX))
            for f in rows["file"]
        ]
    )


def bare_loop(
    data: dict[str, Any], epochs: int, batch: int, lr: float, device: str, amp: bool, seed: int = 0
) -> dict[str, float]:
    """Train resnet18 the plain PyTorch way; returns images/s over the timed epochs (validation included).

    Timed like covidseg's train_seconds (trainer.fit): from the data and the network going to the device
    (in a fresh process that includes the CUDA context) to the end of the last epoch."""
    torch.manual_seed(seed)
    counts = torch.bincount(data["train"][1], minlength=2).float()
    model = create_backbone("resnet18", pretrained=False, num_outputs=1, in_chans=1)
    start = time.perf_counter()
    x_train, y_train = (t.to(device) for t in data["train"])
    x_val, y_val = (t.to(device) for t in data["val"])
    pos_weight = (counts[0] / counts[1]).reshape(1).to(device)  # covidseg's weighted_loss, binary form
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    autocast = torch.autocast(device, dtype=torch.float16) if amp else nullcontext()

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1).float() / 255.0 - MEAN) / STD

    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), device=device)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            with autocast:
                logits = model(prepare(x_train[idx])).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(
                logits.float(), y_train[idx].float(), pos_weight=pos_weight
            )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        model.eval()
        with torch.no_grad(), autocast:
            correct = 0
            for i in range(0, len(y_val), batch):
                logits = model(prepare(x_val[i : i + batch])).squeeze(1)
                correct += int(((logits.float() > 0).long() == y_val[i : i + batch]).sum())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, "images_per_second": len(y_train) * epochs / seconds}


def bare_in_fresh_process(split: Path, epochs: int, gpu: bool) -> dict[str, Any]:
    """The bare loop in a new Python process, as every covidseg-train run is one: a process's first
    training pays one-off costs (CUDA context, loading kernels, cuDNN/cuBLAS set-up; on the GPU over a
    second, as long as a few epochs of this data set) that a second training in the same process does not.
    That second run is returned too (`warm_images_per_second`), for reference."""
    code = (
        "import json, sys, torch; from benchmarks import bench_train as b; "
        "data = torch.load(sys.argv[1]); e, gpu = int(sys.argv[2]), sys.argv[3] == '1'; "
        "d = 'cuda' if gpu else 'cpu'; first = b.bare_loop(data, e, 32, 0.002, d, amp=gpu); "
        "again = b.bare_loop(data, e, 32, 0.002, d, amp=gpu); "
        "print(json.dumps({**first, 'warm_images_per_second': again['images_per_second']}))"
    )
    command = [sys.executable, "-c", code, str(split), str(epochs), str(int(gpu))]
    _, output = run_timed(command, dict(os.environ), "the bare loop", cwd=REPO)
    return json.loads(output.strip().splitlines()[-1])


def throughput(
    root: Path, work: Path, image_size: int, epochs: int, repeats: int, gpu: bool, extra: list[str]
) -> dict[str, Any]:
    """covidseg (no augmentation; default augmentation) vs the bare loop, alternated, `repeats` times each."""
    env = {**os.environ, "COVIDSEG_CACHE_DIR": str(work / "cache-real")}
    common = [
        f"data.root={root}",
        f"data.image_size={image_size}",
        f"trainer.max_epochs={epochs}",
        "recipe=study",
        "logger=none",
        "seed=0",
        *(["trainer=gpu"] if gpu else ["trainer=cpu"]),
        *extra,
    ]
    tag = "gpu" if gpu else "cpu"
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "covidseg_no_aug": [], "covidseg_aug": []}
    data = None
    for r in range(repeats):
        for name in ("covidseg_no_aug", "bare", "covidseg_aug"):
            if name == "bare":
                if data is None:
                    splits = work / "runs" / f"{tag}-covidseg_no_aug-0" / "splits.csv"
                    data = real_split(root, image_size, work / "cache-real", splits)
                    torch.save(data, work / f"bare-split-{tag}.pt")
                result = bare_in_fresh_process(work / f"bare-split-{tag}.pt", epochs, gpu)
                warm = result["warm_images_per_second"]
                print(f"  {tag} bare, again in the same process: {warm:.1f} images/s", flush=True)
            else:
                overrides = common + (NO_AUGMENTATION if name == "covidseg_no_aug" else [])
                metrics = covidseg_train(work / "runs" / f"{tag}-{name}-{r}", overrides, env)
                done = metrics["epochs_run"] - (metrics.get("resumed_at_epoch") or 0)
                result = {
                    "train_seconds": metrics["train_seconds"],
                    "images_per_second": metrics["n_train"] * done / metrics["train_seconds"],
                    "wall_seconds": metrics["wall_seconds"],
                    "n_train": metrics["n_train"],
                    "epochs_run": metrics["epochs_run"],
                }
            runs[name].append(result)
            print(f"  {tag} {name} repeat {r + 1}: {result['images_per_second']:.1f} images/s", flush=True)
    median = {k: statistics.median(x["images_per_second"] for x in v) for k, v in runs.items()}
    return {
        "image_size": image_size,
        "epochs": epochs,
        "n_train": runs["covidseg_no_aug"][0]["n_train"],
        "n_val": len(data["val"][1]),
        "median_images_per_second": median,
        "median_bare_warm_images_per_second": statistics.median(
            x["warm_images_per_second"] for x in runs["bare"]
        ),
        "ratio_no_aug": median["covidseg_no_aug"] / median["bare"],
        "ratio_aug": median["covidseg_aug"] / median["bare"],
        "runs": runs,
    }


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _log_span(job_dir: Path) -> float | None:
    """Seconds between the first and last time-stamped line of a job's Hydra log, if it has one."""
    stamps = [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        for log in job_dir.glob("*.log")
        for line in log.read_text(errors="replace").splitlines()
        if (m := _STAMP.match(line))
    ]
    return (max(stamps) - min(stamps)).total_seconds() if len(stamps) > 1 else None


def sweep(root: Path, work: Path, jobs: int, image_size: int, epochs: int, limit: int) -> dict[str, Any]:
    """A multirun of `jobs` seeds timed from outside vs the sum of its jobs' train_seconds."""
    sweep_dir = work / "runs" / "sweep"
    shutil.rmtree(sweep_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "covidseg.train",
        "-m",  # Hydra's multirun
        f"data.root={root}",
        f"data.image_size={image_size}",
        f"data.limit={limit}",
        f"trainer.max_epochs={epochs}",
        "logger=none",
        f"seed={','.join(str(s) for s in range(jobs))}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "COVIDSEG_CACHE_DIR": str(work / "cache-real")}
    wall, _ = run_timed(command, env, "the sweep")
    job_dirs = sorted(d for d in sweep_dir.iterdir() if (d / "metrics.json").is_file())
    train = [json.loads((d / "metrics.json").read_text())["train_seconds"] for d in job_dirs]
    spans = [_log_span(d) for d in job_dirs]
    in_jobs = sum(spans) if all(s is not None for s in spans) else None
    return {
        "jobs": len(job_dirs),
        "image_size": image_size,
        "epochs": epochs,
        "limit": limit,
        "wall_seconds": wall,
        "sum_train_seconds": sum(train),
        "ratio": wall / sum(train),
        # wall = process start-up and sweep bookkeeping (outside any job's log)
        #      + per job: set-up, test, writing its files (in its log, outside trainer.fit) + training
        "jobs_logged_seconds": in_jobs,
        "outside_jobs_seconds": None if in_jobs is None else wall - in_jobs,
        "in_jobs_not_training_seconds": None if in_jobs is None else in_jobs - sum(train),
    }


def backbone_speed(names: list[str], size: int, batch: int = 32, steps: int = 3) -> dict[str, float]:
    """Training images/s of each backbone on random input (forward, backward, Adam step; 1 warm-up step)."""
    speeds = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in names:
        model = create_backbone(name, pretrained=False, num_outputs=1, in_chans=1).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
        x = torch.randn(batch, 1, size, size, device=device)
        y = torch.randint(0, 2, (batch,), device=device).float()
        for step in range(steps + 1):
            if step == 1:  # the first step warms up allocators and kernels
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        speeds[name] = batch * steps / (time.perf_counter() - start)
        print(f"  {name}: {speeds[name]:.1f} train images/s at {size} px", flush=True)
    return speeds
