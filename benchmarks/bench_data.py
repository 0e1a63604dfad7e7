"""bench.py's data sections: set-up cost per image (cold and warm cache) and peak memory of real runs.

Every measurement runs in a fresh subprocess, so nothing decoded or imported by an earlier one helps, and
its memory is sampled from outside (/proc/<pid>/status every ~20 ms): RssAnon (anonymous memory: what the
process allocated, not file pages the kernel can drop, so a memory-mapped store does not count) is the
criterion; VmHWM (peak resident set, file pages included) is printed beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.generate_images import generate

# Run in the subprocess: time CXRDataModule.setup() alone (imports excluded), on a fresh cache or a warm one.
SETUP_CHILD = """
import json, sys, time
from covidseg.data.datamodule import CXRDataModule
root, image_size, cache_dir, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
before = status("RssAnon")
dm = CXRDataModule(root=root, image_size=image_size, cache_dir=cache_dir, classes=["normal", "covid"],
                   limit=limit or None)
start = time.perf_counter()
dm.setup()
seconds = time.perf_counter() - start
n = sum(int(dm.stats.get(f"n_{s}", 0)) for s in ("train", "val", "test")) or len(dm.table)
print("BENCH_RESULT " + json.dumps({"setup_seconds": seconds, "n_images": n, "rss_anon_before_kb": before}))
"""


# Run in the subprocess: the memory floor of training itself, without covidseg or a data set: resnet18 (timm,
# one input channel, one logit) trained with Adam for a few steps on one random uint8 batch, normalised as
# covidseg normalises it. Not bench_train.backbone_speed: that imports covidseg (Lightning, torchmetrics),
# whose memory is part of what the floor must leave out.
BARE_CHILD = """
import json, statistics, sys, time, timm, torch, torch.nn.functional as F
image_size, batch_size = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = timm.create_model("resnet18", pretrained=False, num_classes=1, in_chans=1)
optimizer = torch.optim.Adam(net.parameters(), lr=0.002)
x = torch.randint(0, 256, (batch_size, 1, image_size, image_size), dtype=torch.uint8)
y = torch.randint(0, 2, (batch_size,)).float()
seconds = []
for _ in range(4):
    start = time.perf_counter()
    loss = F.binary_cross_entropy_with_logits(net((x.float() / 255 - 0.5) / 0.25).squeeze(1), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    seconds.append(time.perf_counter() - start)
print("BENCH_RESULT " + json.dumps({"ms_per_step": 1000 * statistics.median(seconds[1:])}))
"""

# glibc's malloc setting that trades speed for memory (see bare_rss): returned to the system on free, large
# blocks cannot pile up in the heap, but every step faults its memory in again.
LOW_MEMORY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class Polled:
    """A finished subprocess with the peaks of its memory, sampled from outside."""

    returncode: int
    output: str
    wall_seconds: float
    peak_rss_anon_kb: int
    peak_rss_kb: int  # VmHWM: the kernel's own peak of the resident set


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return values


def run_polled(command: list[str], env: dict[str, str] | None = None, interval: float = 0.02) -> Polled:
    """Run `command`, polling its RssAnon and VmHWM until it exits; output (stdout+stderr) is kept."""
    start = time.perf_counter()
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        peak_anon = peak_hwm = 0
        # Drained by a thread: a full pipe would block the child while this loop only samples memory.
        chunks: list[str] = []
        reader = threading.Thread(target=lambda: chunks.append(process.stdout.read()), daemon=True)
        reader.start()
        while process.poll() is None:
            values = _status(process.pid)
            peak_anon = max(peak_anon, values.get("RssAnon", 0))
            peak_hwm = max(peak_hwm, values.get("VmHWM", 0))
            time.sleep(interval)
        reader.join()
    return Polled(process.returncode, "".join(chunks), time.perf_counter() - start, peak_anon, peak_hwm)


def env_label(env: dict[str, str]) -> str:
    """The variables a measurement ran with, as a shell would set them ('' for none)."""
    return " ".join(f"{k}={v}" for k, v in env.items())


def _result_line(output: str) -> dict[str, Any]:
    """The numbers a child process printed on its BENCH_RESULT line."""
    line = next(x for x in output.splitlines() if x.startswith("BENCH_RESULT "))
    return json.loads(line.removeprefix("BENCH_RESULT "))


def check(result: Polled, what: str) -> None:
    if result.returncode != 0:
        sys.stderr.write(result.output[-4000:])
        raise SystemExit(f"bench: {what} failed (exit {result.returncode}); its output is above.")


def setup_once(root: Path, image_size: int, cache_dir: Path, limit: int) -> dict[str, Any]:
    """CXRDataModule.setup() in a fresh process: seconds, ms per image and the process's memory peaks."""
    command = [sys.executable, "-c", SETUP_CHILD, str(root), str(image_size), str(cache_dir), str(limit)]
    result = run_polled(command)
    check(result, f"set-up of {root} (limit {limit})")
    child = _result_line(result.output)
    return {
        **child,
        "ms_per_image": 1000 * child["setup_seconds"] / child["n_images"],
        "peak_rss_anon_mb": result.peak_rss_anon_kb / 1024,
        "rss_anon_before_mb": child["rss_anon_before_kb"] / 1024,
        "peak_rss_mb": result.peak_rss_kb / 1024,
    }


def setup_scaling(
    work: Path, counts: list[int], source_size: int, compare_size: int, image_size: int
) -> list[dict[str, Any]]:
    """Cold then warm set-up for each N at `source_size`, and at the largest N for `compare_size` sources.

    One generated data set per source size (the largest N); smaller N are its data.limit subsets."""
    rows = []
    largest = max(counts)
    plan = [(source_size, n) for n in sorted(counts)]
    if compare_size:
        plan.append((compare_size, largest))
    for size, n in plan:
        root = generate(work / f"gen-{largest}-{size}", largest, size)
        files_mb = sum(f.stat().st_size for f in (root / "images").rglob("*.png")) / 2**20
        cache = work / "cache-setup" / f"{size}-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        for state in ("cold", "warm"):
            result = setup_once(root, image_size, cache, n if n < largest else 0)
            rows.append(
                {
                    "source_size": size,
                    "n": result["n_images"],
                    "cache": state,
                    **result,
                    "mb_per_file": files_mb / largest,
                }
            )
            print(
                f"  set-up {state}: {result['n_images']} images of {size}^2 -> {image_size}: "
                f"{result['ms_per_image']:.3f} ms/image, peak RssAnon {result['peak_rss_anon_mb']:.0f} MB",
                flush=True,
            )
    return rows


def rss_runs(
    work: Path,
    n: int,
    ref_n: int,
    source_size: int,
    image_size: int,
    batch_size: int,
    extra: list[str],
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Peak RssAnon of short real covidseg-train runs on `n` generated images, and on `ref_n` of them
    (data.limit) so the growth per image shows; each with a cold cache, then again warm. `env`: variables
    set for the runs (e.g. LOW_MEMORY_MALLOC)."""
    root = generate(work / f"gen-{n}-{source_size}", n, source_size)
    rows = []
    for count in sorted({min(ref_n, n), n}):
        cache = work / "cache-rss" / f"{source_size}-{image_size}-{count}"
        shutil.rmtree(cache, ignore_errors=True)
        for state in ("cold", "warm"):
            run = work / "runs" / f"rss-{count}-{state}"
            shutil.rmtree(run, ignore_errors=True)
            command = [
                sys.executable,
                "-m",
                "covidseg.train",
                f"data.root={root}",
                f"data.image_size={image_size}",
                f"data.batch_size={batch_size}",
                f"data.limit={count if count < n else 'null'}",
                "logger=none",
                "trainer.max_epochs=1",
                "++trainer.limit_train_batches=2",
                "++trainer.limit_val_batches=1",
                "++trainer.limit_test_batches=1",
                f"hydra.run.dir={run}",
                *extra,
            ]
            result = run_polled(command, env={**os.environ, **(env or {}), "COVIDSEG_CACHE_DIR": str(cache)})
            check(result, "covidseg-train (memory run)")
            metrics = json.loads((run / "metrics.json").read_text())
            images = sum(int(metrics.get(f"n_{s}", 0)) for s in ("train", "val", "test"))
            rows.append(
                {
                    "n": images,
                    "source_size": source_size,
                    "image_size": image_size,
                    "batch_size": batch_size,
                    "env": dict(env or {}),
                    "cache": state,
                    "wall_seconds": result.wall_seconds,
                    "peak_rss_anon_mb": result.peak_rss_anon_kb / 1024,
                    "peak_rss_mb": result.peak_rss_kb / 1024,
                    "uint8_arrays_mb": images * image_size**2 / 2**20,
                }
            )
            print(
                f"  run {state}: {images} images at {image_size} px: peak RssAnon "
                f"{rows[-1]['peak_rss_anon_mb']:.0f} MB (uint8 arrays {rows[-1]['uint8_arrays_mb']:.0f} MB)",
                flush=True,
            )
    return rows


def bare_rss(image_size: int, batch_size: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Peak RssAnon of a bare PyTorch training loop (BARE_CHILD) at the memory runs' image and batch size:
    what training alone needs (imports, network, Adam, activations), whatever the trainer or data set; and
    its median time per step. `env`: variables set for the child (e.g. LOW_MEMORY_MALLOC)."""
    command = [sys.executable, "-c", BARE_CHILD, str(image_size), str(batch_size)]
    result = run_polled(command, env={**os.environ, **(env or {})})
    check(result, "the bare loop (memory run)")
    row = {
        "image_size": image_size,
        "batch_size": batch_size,
        "env": dict(env or {}),
        "peak_rss_anon_mb": result.peak_rss_anon_kb / 1024,
        "peak_rss_mb": result.peak_rss_kb / 1024,
        **_result_line(result.output),
    }
    setting = env_label(row["env"]) or "default malloc"
    print(
        f"  bare loop at {image_size} px, batch {batch_size}, {setting}: peak RssAnon "
        f"{row['peak_rss_anon_mb']:.0f} MB, {row['ms_per_step']:.0f} ms per step",
        flush=True,
    )
    return row
