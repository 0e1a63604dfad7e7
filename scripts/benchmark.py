"""Throughput and cache benchmarks, measured in one run on this machine; prints ratios, asserts nothing.

    .venv/bin/python scripts/benchmark.py [--size 128] \
        [--backbones resnet18 densenet121 mobilenetv3_large_100]

- training images/s of each backbone (forward + backward + Adam step, batch 32, 1 channel), and its
  cost relative to the first backbone: use it to budget a study (epochs x images / speed);
- decoding an image from PNG vs reading the cached uint8 array (the image cache's speed-up).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from covidseg.classification import create_backbone
from covidseg.data.images import ImageCache, decode
from covidseg.paths import data_dir


def train_speed(backbone: str, size: int, batch: int, steps: int) -> float:
    model = create_backbone(backbone, pretrained=False, num_outputs=1, in_chans=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 2, (batch,)).float()
    for step in range(steps + 1):
        if step == 1:  # the first step warms up allocators and kernels
            start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def cache_speedup(n: int, size: int, tmp: Path) -> tuple[float, float]:
    files = sorted((data_dir() / "covid-cxr" / "images" / "covid").glob("*.png"))[:n]
    start = time.perf_counter()
    for f in files:
        decode(f, size)
    decode_s = (time.perf_counter() - start) / len(files)
    cache = ImageCache(tmp, size)
    cache.load_many([str(f) for f in files])
    start = time.perf_counter()
    cache.load_many([str(f) for f in files])
    cached_s = (time.perf_counter() - start) / len(files)
    return decode_s, cached_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--backbones", nargs="+", default=["resnet18", "densenet121", "mobilenetv3_large_100"]
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, image size {args.size}, "
        f"batch {args.batch}"
    )
    speeds = {b: train_speed(b, args.size, args.batch, args.steps) for b in args.backbones}
    first = args.backbones[0]
    for b, s in speeds.items():
        print(f"{b:28s} {s:7.1f} train images/s   cost x{speeds[first] / s:.2f} of {first}")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        decode_s, cached_s = cache_speedup(40, args.size, Path(tmp))
    print(
        f"decode PNG {decode_s * 1e3:.1f} ms/image, cached read {cached_s * 1e3:.2f} ms/image: "
        f"cache is x{decode_s / cached_s:.1f} faster"
    )


if __name__ == "__main__":
    main()
