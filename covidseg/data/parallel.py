"""CPU-bound work (decoding images) on all cores, results in order, with a progress bar on a terminal."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

PARALLEL_MIN = 32  # fewer tasks than this run in this process: starting workers would cost more
PROGRESS_MIN = 200  # fewer tasks than this get no progress bar


def default_workers() -> int:
    """The cores this process may use (the CPU affinity mask where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(
    fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int, description: str
) -> Iterator[Any]:
    """fn(task) for each task, yielded in task order, from `workers` processes when that is worth it.

    `fn` must be a module-level function (it is pickled by reference). Closing the iterator early (a
    consumer that stops at an error) cancels the tasks not yet started.

    Args:
        fn: the work on one task; its result must pickle.
        tasks: the inputs, in order.
        workers: processes (forked) at most; 1, or fewer than PARALLEL_MIN tasks, runs them here.
        description: what is done (e.g. "Decoding images"), for the log and the progress bar.
    """
    if not tasks:
        return
    parallel = workers > 1 and len(tasks) >= PARALLEL_MIN
    start = time.perf_counter()
    log.info("%s: %d file(s) on %d process(es)", description, len(tasks), workers if parallel else 1)
    executor = None
    if parallel:
        # fork (as DataLoader workers on Linux): spawn and forkserver re-run the caller's main script,
        # which breaks scripts and notebooks without an `if __name__ == "__main__"` guard
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        executor = ProcessPoolExecutor(workers, mp_context=context)
        results = executor.map(fn, tasks, chunksize=max(1, min(16, len(tasks) // (workers * 8))))
    else:
        results = map(fn, tasks)
    try:
        with _progress(description, len(tasks)) as advance:
            for result in results:
                advance()
                yield result
        elapsed = time.perf_counter() - start
        log.info("%s: done in %.1f s (%.1f ms per file)", description, elapsed, elapsed / len(tasks) * 1e3)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


class _progress:
    """A rich progress bar on an interactive terminal for long runs; nothing otherwise (no log spam)."""

    def __init__(self, description: str, total: int):
        self.bar = None
        if total >= PROGRESS_MIN and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            columns = (
                f"[progress.description]{description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            self.bar = Progress(*columns, console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(description, total=total)

    def __enter__(self) -> Callable[[], None]:
        if self.bar is None:
            return lambda: None
        self.bar.start()
        return lambda: self.bar.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
