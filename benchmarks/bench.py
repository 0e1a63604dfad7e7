"""`make bench`: covidseg's speed and memory, measured in one run on this machine; prints one table.

    python -m benchmarks.bench [--sections train sweep setup rss] [--json bench.json]
    # the issue's full-size checks (a few GB of generated PNGs under --work-dir):
    python -m benchmarks.bench --setup-n 500 1000 3000 --setup-size 1024 --rss-n 20000 --rss-size 512 \\
        --rss-image-size 448
    # per-backbone training speed, to budget a study:
    python -m benchmarks.bench --sections backbones --backbone-size 224

Sections (each measured here and now; nothing is asserted, the numbers are for reading):
- train: images/s of covidseg-train vs a bare PyTorch loop on the same split of the real covid-cxr data
  (resnet18, batch 32, Adam lr 0.002, same epochs), augmentation off on both sides, plus covidseg with
  its default augmentation; alternated --repeats times, medians. Each trains in a fresh process, timed from
  the data and network going to the device to the end of the last epoch (covidseg: its train_seconds);
  the bare loop's second training in its warm process is printed beside it. On a GPU also at
  --gpu-image-size, fp16.
- sweep: a small multirun's wall time vs the sum of its jobs' train_seconds, and where the rest goes.
- setup: CXRDataModule.setup() ms per image on generated PNGs, cold cache then warm, in fresh processes,
  with peak RssAnon; for each --setup-n at --setup-size, and at --setup-compare-size for the largest N.
- rss: peak RssAnon of short covidseg-train runs on --rss-n generated images (and --rss-ref-n of them), and of
  a bare PyTorch loop at the same image and batch size (no data set: the floor training itself sets), with its
  time per step. With --rss-low-memory-malloc all of it again under glibc's MALLOC_MMAP_THRESHOLD_=131072,
  which lowers that floor at a cost in speed (both shown).
- backbones (only when asked): training images/s per backbone on random input.
From setup and rss, an extrapolation to NIH ChestX-ray14's 112,120 images (estimates, labelled so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import bench_data
from covidseg.paths import data_dir

NIH_IMAGES = 112_120
SECTIONS = ("train", "sweep", "setup", "rss", "backbones")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    mem_kb = next(
        int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x
    )
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(mem_kb / 2**20, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "covidseg_commit": commit or None,
        "load_average_at_start": os.getloadavg(),
    }


def describe(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gb']} GB RAM, "
        f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}; covidseg {m['covidseg_commit']}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}"
    )


def growth(mb_small: float, mb_large: float, n_small: int, n_large: int) -> float:
    """MB per image between two measurements; 0 when the larger N did not use more (sampling noise, or
    memory that does not grow with N): a negative slope would extrapolate to nonsense."""
    return max(0.0, (mb_large - mb_small) / (n_large - n_small))


def extrapolate(
    setup: list[dict[str, Any]] | None, rss: list[dict[str, Any]] | None, source_size: int
) -> dict[str, Any]:
    """Linear estimates for NIH_IMAGES images from the measured per-image costs and memory growth."""
    out: dict[str, Any] = {}
    if setup:
        main = [r for r in setup if r["source_size"] == source_size]
        largest = max(r["n"] for r in main)
        for state in ("cold", "warm"):
            rows = sorted((r for r in main if r["cache"] == state), key=lambda r: r["n"])
            at, first = rows[-1], rows[0]
            seconds = at["setup_seconds"] * NIH_IMAGES / at["n"]
            how = f"{at['ms_per_image']:.3f} ms/image at N={largest}"
            if at["n"] > first["n"]:  # fixed cost + marginal cost per image, from the two extreme N
                marginal = (at["setup_seconds"] - first["setup_seconds"]) / (at["n"] - first["n"])
                seconds = at["setup_seconds"] + marginal * (NIH_IMAGES - at["n"])
                how = f"{1000 * marginal:.3f} ms per extra image between N={first['n']} and {at['n']}"
                slope = growth(first["peak_rss_anon_mb"], at["peak_rss_anon_mb"], first["n"], at["n"])
                out[f"setup_{state}_rss_anon_mb"] = at["peak_rss_anon_mb"] + slope * (NIH_IMAGES - at["n"])
                out[f"setup_{state}_rss_anon_kb_per_image"] = slope * 1024
            out[f"setup_{state}_seconds"] = seconds
            out[f"setup_{state}_from"] = f"{how}, {source_size}² PNGs"
    rss = [r for r in rss or [] if not r.get("env")]  # the default allocator's runs
    if rss:
        peak = {}
        for r in rss:  # the larger of cold and warm per N
            peak[r["n"]] = max(peak.get(r["n"], 0), r["peak_rss_anon_mb"])
        ns = sorted(peak)
        size = rss[0]["image_size"]
        out["run_image_size"] = size
        out["uint8_arrays_mb"] = NIH_IMAGES * size**2 / 2**20
        if len(ns) > 1:
            slope = growth(peak[ns[0]], peak[ns[-1]], ns[0], ns[-1])
            out["run_rss_anon_kb_per_image"] = slope * 1024
            out["run_from"] = f"N={ns[0]} and N={ns[-1]}"
            out["run_rss_anon_mb"] = peak[ns[-1]] + slope * (NIH_IMAGES - ns[-1])
    return out


def malloc_label(row: dict[str, Any]) -> str:
    label = bench_data.env_label(row.get("env") or {})
    return f", {label}" if label else ""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def gb(mb: float) -> str:
    if mb >= 1024:
        return f"{mb / 1024:.2f} GB"
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb * 1024:.0f} kB"


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [("Section", "Measurement", "Result", "Conditions")]
    for tag in ("train_cpu", "train_gpu"):
        t = results.get(tag)
        if not t:
            continue
        med = t["median_images_per_second"]
        cond = (
            f"resnet18, {t['image_size']} px, {plural(t['epochs'], 'epoch')}, batch 32, Adam 0.002, "
            f"{t['n_train']} train + {t['n_val']} val images of covid-cxr, median of {args.repeats}"
            + (", fp16 mixed" if tag == "train_gpu" else "")
        )
        name = f"Training ({tag[-3:].upper()})"
        rows.append(
            (
                name,
                "covidseg / bare loop, augmentation off",
                f"{med['covidseg_no_aug']:.1f} / {med['bare']:.1f} images/s = {t['ratio_no_aug']:.3f}×",
                cond,
            )
        )
        rows.append(
            (
                name,
                "covidseg, default augmentation / bare loop",
                f"{med['covidseg_aug']:.1f} images/s = {t['ratio_aug']:.3f}×",
                "as above",
            )
        )
        warm = t.get("median_bare_warm_images_per_second")
        if warm:
            rows.append(
                (
                    name,
                    "bare loop trained again in its warm process (reference)",
                    f"{warm:.1f} images/s",
                    "both sides above each train once in a fresh process, timed from data and network "
                    "going to the device",
                )
            )
    s = results.get("sweep")
    if s:
        rest = ""
        if s["outside_jobs_seconds"] is not None:
            rest = (
                f"; rest: {s['outside_jobs_seconds']:.1f} s outside the jobs (start-up, imports, sweep "
                f"bookkeeping), {s['in_jobs_not_training_seconds']:.1f} s in jobs outside trainer.fit "
                "(set-up, test, files)"
            )
        rows.append(
            (
                "Sweep",
                "wall time / sum of the jobs' train_seconds",
                f"{s['wall_seconds']:.1f} s / {s['sum_train_seconds']:.1f} s = {s['ratio']:.2f}×",
                f"{s['jobs']} jobs, {s['image_size']} px, {plural(s['epochs'], 'epoch')}, "
                f"data.limit={s['limit']}{rest}",
            )
        )
    for r in results.get("setup") or []:
        rows.append(
            (
                f"Set-up, {r['cache']} cache",
                f"N={r['n']}, {r['source_size']}² PNGs ({gb(r['mb_per_file'])} each)",
                f"{r['ms_per_image']:.3f} ms/image; peak RssAnon {gb(r['peak_rss_anon_mb'])} "
                f"(peak RSS {gb(r['peak_rss_mb'])})",
                f"CXRDataModule.setup() at image_size {args.setup_image_size}, fresh process "
                f"(RssAnon after imports {gb(r['rss_anon_before_mb'])}), page cache warm",
            )
        )
    for r in results.get("rss") or []:
        rows.append(
            (
                f"Peak memory of a run{malloc_label(r)}",
                f"{r['n']} generated {r['source_size']}² PNGs at "
                f"data.image_size={r['image_size']}, {r['cache']} cache",
                f"RssAnon {gb(r['peak_rss_anon_mb'])} (peak RSS {gb(r['peak_rss_mb'])}); uint8 "
                f"arrays would be {gb(r['uint8_arrays_mb'])}",
                f"covidseg-train, batch {r['batch_size']}, 1 epoch of 2 train batches, "
                f"{r['wall_seconds']:.0f} s",
            )
        )
    bare_rows = results.get("rss_bare") or []
    for bare in bare_rows:
        speed = f"{bare['ms_per_step']:.0f} ms per step"
        if bare.get("env") and not bare_rows[0].get("env"):
            speed += f" ({bare['ms_per_step'] / bare_rows[0]['ms_per_step']:.2f}× the default's)"
        rows.append(
            (
                f"Peak memory of a bare PyTorch loop (reference){malloc_label(bare)}",
                f"resnet18 + Adam at {bare['image_size']} px, batch {bare['batch_size']}, 4 steps on one "
                "random batch; torch and timm imported, no data set",
                f"RssAnon {gb(bare['peak_rss_anon_mb'])} (peak RSS {gb(bare['peak_rss_mb'])}); {speed}",
                "what training itself takes at this batch: the floor under runs with the same malloc",
            )
        )
    e = results.get("extrapolation") or {}
    label = f"Estimate for {NIH_IMAGES:,} images (extrapolated)"
    for state in ("cold", "warm"):
        if f"setup_{state}_seconds" in e:
            mem = e.get(f"setup_{state}_rss_anon_mb")
            rows.append(
                (
                    label,
                    f"set-up, {state} cache",
                    f"{e[f'setup_{state}_seconds']:.0f} s" + (f"; RssAnon {gb(mem)}" if mem else ""),
                    f"linear from {e[f'setup_{state}_from']}"
                    + (
                        f"; RssAnon +{e[f'setup_{state}_rss_anon_kb_per_image']:.1f} kB per image"
                        if mem
                        else ""
                    ),
                )
            )
    if "run_rss_anon_mb" in e:
        rows.append(
            (
                label,
                f"peak RssAnon of a run at {e['run_image_size']} px",
                gb(e["run_rss_anon_mb"]),
                f"linear, {e['run_rss_anon_kb_per_image']:.1f} kB per image between {e['run_from']}; "
                f"uint8 arrays would be {gb(e['uint8_arrays_mb'])}",
            )
        )
    speeds = results.get("backbones")
    if speeds:
        first = next(iter(speeds))
        for name, v in speeds.items():
            rows.append(
                (
                    "Backbone speed",
                    name,
                    f"{v:.1f} train images/s = cost ×{speeds[first] / v:.2f} of {first}",
                    f"random input, {args.backbone_size} px, batch 32, Adam",
                )
            )
    # A condition repeated from the row above reads "as above": the table stays narrow enough to scan.
    rows = [(*r[:3], "as above" if i > 1 and r[3] == rows[i - 1][3] else r[3]) for i, r in enumerate(rows)]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=["train", "sweep", "setup", "rss"])
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "covidseg-bench",
        help="generated data sets (kept and reused), caches and runs",
    )
    p.add_argument("--data", type=Path, default=None, help="real data set (default: <data dir>/covid-cxr)")
    p.add_argument("--json", type=Path, default=None, help="write every raw number here")
    g = p.add_argument_group("train")
    g.add_argument("--image-size", type=int, default=112)
    g.add_argument("--epochs", type=int, default=4)
    g.add_argument("--repeats", type=int, default=2)
    g.add_argument("--gpu-image-size", type=int, default=224)
    g.add_argument("--gpu-epochs", type=int, default=12)
    g.add_argument("--no-gpu", action="store_true", help="skip the GPU comparison even with a GPU")
    g.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison (GPU machine, short lease)")
    g.add_argument("--covidseg-args", nargs="*", default=[], help="extra Hydra overrides for these runs")
    g = p.add_argument_group("sweep")
    g.add_argument("--sweep-jobs", type=int, default=3)
    g.add_argument("--sweep-image-size", type=int, default=64)
    g.add_argument("--sweep-epochs", type=int, default=2)
    g.add_argument("--sweep-limit", type=int, default=120)
    g = p.add_argument_group("setup")
    g.add_argument("--setup-n", type=int, nargs="+", default=[300, 1000, 3000])
    g.add_argument("--setup-size", type=int, default=1024, help="side of the generated PNGs")
    g.add_argument(
        "--setup-compare-size",
        type=int,
        default=256,
        help="second PNG size, at the largest N, to show (in)dependence on file size; 0: none",
    )
    g.add_argument("--setup-image-size", type=int, default=224, help="data.image_size of the set-up")
    g = p.add_argument_group("rss")
    g.add_argument("--rss-n", type=int, default=2000)
    g.add_argument("--rss-ref-n", type=int, default=200, help="a smaller run, so growth per image shows")
    g.add_argument("--rss-size", type=int, default=512)
    g.add_argument("--rss-image-size", type=int, default=448)
    g.add_argument("--rss-batch-size", type=int, default=8)
    g.add_argument("--rss-args", nargs="*", default=[], help="extra Hydra overrides for these runs")
    g.add_argument(
        "--rss-low-memory-malloc",
        action="store_true",
        help="measure again with MALLOC_MMAP_THRESHOLD_=131072 (glibc): less memory, slower steps",
    )
    g = p.add_argument_group("backbones")
    g.add_argument("--backbones", nargs="+", default=["resnet18", "densenet121", "mobilenetv3_large_100"])
    g.add_argument("--backbone-size", type=int, default=128)
    args = p.parse_args()
    if min(args.setup_n) < 12 or args.rss_n < 12:
        p.error("--setup-n and --rss-n need at least 12 images (patients of both classes in every split)")
    return args


def main() -> None:
    args = parse_args()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = (args.data or data_dir() / "covid-cxr").resolve()
    results: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    started = time.perf_counter()
    print(f"Machine: {describe(results['machine'])}", flush=True)
    if {"train", "sweep", "backbones"} & set(args.sections):
        from benchmarks import bench_train  # imports Lightning and timm: not needed by the data sections
    if "train" in args.sections:
        if not args.no_cpu:
            print("== train: covidseg vs bare loop (CPU)", flush=True)
            results["train_cpu"] = bench_train.throughput(
                root, work, args.image_size, args.epochs, args.repeats, False, args.covidseg_args
            )
        if torch.cuda.is_available() and not args.no_gpu:
            print("== train: covidseg vs bare loop (GPU)", flush=True)
            results["train_gpu"] = bench_train.throughput(
                root, work, args.gpu_image_size, args.gpu_epochs, args.repeats, True, args.covidseg_args
            )
    if "sweep" in args.sections:
        print("== sweep", flush=True)
        results["sweep"] = bench_train.sweep(
            root, work, args.sweep_jobs, args.sweep_image_size, args.sweep_epochs, args.sweep_limit
        )
    if "setup" in args.sections:
        print("== setup (generating data sets on first use)", flush=True)
        results["setup"] = bench_data.setup_scaling(
            work, args.setup_n, args.setup_size, args.setup_compare_size, args.setup_image_size
        )
    if "rss" in args.sections:
        print("== rss: peak memory of real runs", flush=True)
        settings = [{}] + ([bench_data.LOW_MEMORY_MALLOC] if args.rss_low_memory_malloc else [])
        results["rss"], results["rss_bare"] = [], []
        for env in settings:
            results["rss"] += bench_data.rss_runs(
                work,
                args.rss_n,
                args.rss_ref_n,
                args.rss_size,
                args.rss_image_size,
                args.rss_batch_size,
                args.rss_args,
                env,
            )
            results["rss_bare"].append(bench_data.bare_rss(args.rss_image_size, args.rss_batch_size, env))
    if "backbones" in args.sections:
        print("== backbones", flush=True)
        results["backbones"] = bench_train.backbone_speed(args.backbones, args.backbone_size)
    if results.get("setup") or results.get("rss"):
        results["extrapolation"] = extrapolate(results.get("setup"), results.get("rss"), args.setup_size)
    results["bench_seconds"] = time.perf_counter() - started
    results["load_average_at_end"] = os.getloadavg()
    print(f"\nMachine: {describe(results['machine'])}\n")
    print(table(results, args))
    busy = max(results["machine"]["load_average_at_start"][0], results["load_average_at_end"][0])
    print(
        f"\n(bench took {results['bench_seconds'] / 60:.1f} min; 1-minute load average at start / end "
        f"{results['machine']['load_average_at_start'][0]:.1f} / {results['load_average_at_end'][0]:.1f}"
        + (
            f": the machine was busy with more than its {results['machine']['usable_cores']} cores' worth of "
            "work, so speeds are lower and noisier than on a quiet machine)"
            if busy > results["machine"]["usable_cores"] + 0.5
            else ")"
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
