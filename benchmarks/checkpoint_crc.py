"""What the zip CRC-32s of a checkpoint cost: writing one with and without them, and checking them on load.

    python -m benchmarks.checkpoint_crc [--repeats 7] [--work-dir /tmp]

A resnet18 + Adam checkpoint (one logit, one input channel: weights, Adam's two moments; about 134 MB) is
written by covidseg's own writer (AtomicCheckpointIO, in line, as on a CPU) into a fresh folder per variant,
alternating with and without CRCs, and read back by covidseg.checkpoints.load_mapped with and without its
CRC check. Prints the median and the range of each, in ms. Nothing is asserted; the numbers are for reading.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch.utils.serialization import config

from covidseg import checkpoints
from covidseg.checkpoints import AtomicCheckpointIO


def resnet18_checkpoint() -> dict:
    """A Lightning-like checkpoint of resnet18 after one Adam step: weights and both moments per weight."""
    net = timm.create_model("resnet18", num_classes=1, in_chans=1)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 1, 64, 64)).sum().backward()
    optimizer.step()
    return {"epoch": 0, "state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()]}


def timed(action: Callable[..., object], *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    action(*args, **kwargs)
    return (time.perf_counter() - start) * 1000


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ms (range {min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work-dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    checkpoint = resnet18_checkpoint()
    saves: dict[bool, list[float]] = {True: [], False: []}
    loads: dict[str, list[float]] = {"load, CRCs checked": [], "load, no check": []}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        writers = {crc: AtomicCheckpointIO(background=False) for crc in saves}
        for _ in range(args.repeats):
            for crc, writer in writers.items():
                before = config.save.compute_crc32
                config.save.compute_crc32 = crc
                try:
                    saves[crc].append(timed(writer.save_checkpoint, checkpoint, _path(work, crc)))
                finally:
                    config.save.compute_crc32 = before
            path = _path(work, True)
            loads["load, CRCs checked"].append(timed(checkpoints.load_mapped, path))
            loads["load, no check"].append(timed(torch.load, path, weights_only=True, mmap=True))
        for writer in writers.values():
            writer.teardown()
        size = _path(work, True).stat().st_size
    print(f"checkpoint file: {size / 1e6:.0f} MB; torch {torch.__version__}; {os.cpu_count()} cores")
    print(f"torch.save with CRCs    {summary(saves[True])}")
    print(f"torch.save without CRCs {summary(saves[False])}")
    for name, values in loads.items():
        print(f"{name:<23} {summary(values)}")


def _path(work: str, crc: bool) -> Path:
    return Path(work) / ("crc" if crc else "no-crc") / "last.ckpt"


if __name__ == "__main__":
    main()
