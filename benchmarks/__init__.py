"""Speed and memory benchmarks of covidseg, run as modules from the repository root.

    python -m benchmarks.bench            # `make bench`: one table of speed and memory on this machine
    python -m benchmarks.hook_timers ...  # covidseg-train with timers on the per-epoch work
    python -m benchmarks.generate_images --n 3000 --size 1024 --out DIR   # data sets of any size

Not part of the installed package: they measure it.
"""
