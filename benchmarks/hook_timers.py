"""covidseg-train with timers on the per-epoch work: where an epoch's time goes beyond the training steps.

    python -m benchmarks.hook_timers data.image_size=224 trainer=gpu logger=none [covidseg-train overrides]

Epoch-level hooks synchronise the device before they start (that wait, the GPU's backlog, is reported on its
own line) and after they end, so their time includes the device work they queued; the checkpoint writer's
calls and the validation loop are timed as they run. Prints mean ms per call when the run ends. The
synchronisations slow the run a little: read the per-call times, not the run's images/s. Wraps private
Lightning classes (_EvaluationLoop, _CheckpointConnector), so it follows the installed Lightning's names.
"""

from __future__ import annotations

import atexit
import collections
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector
from torchmetrics import MetricCollection

from covidseg.checkpoints import AtomicCheckpointIO
from covidseg.models import classifier

TIMES: dict[str, list[float]] = collections.defaultdict(list)


def synchronise() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(owner: Any, name: str, label: str, sync_first: bool = False, sync_after: bool = True) -> None:
    """Replace owner.name with a version that records its duration under `label`."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if sync_first:
            start = time.perf_counter()
            synchronise()
            TIMES[f"{label} [wait for the device first]"].append(time.perf_counter() - start)
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        if sync_after:
            synchronise()
        TIMES[label].append(time.perf_counter() - start)
        return result

    setattr(owner, name, wrapper)


def report() -> None:
    print("== per-epoch work (ms per call)", flush=True)
    for label, times in sorted(TIMES.items(), key=lambda kv: -sum(kv[1])):
        mean = 1e3 * sum(times) / len(times)
        print(f"{label:62s} n={len(times):4d} mean={mean:8.2f} total={sum(times):7.3f} s", flush=True)


def install() -> None:
    Classifier, Writer = classifier.Classifier, AtomicCheckpointIO
    timed(Classifier, "on_validation_epoch_end", "Classifier.on_validation_epoch_end", sync_first=True)
    timed(Classifier, "on_train_epoch_end", "Classifier.on_train_epoch_end", sync_first=True)
    timed(Classifier, "_end_epoch", "Classifier._end_epoch")
    timed(classifier, "predicted_counts", "classifier.predicted_counts")
    timed(MetricCollection, "update", "MetricCollection.update")
    timed(MetricCollection, "compute", "MetricCollection.compute")
    timed(ModelCheckpoint, "_save_checkpoint", "ModelCheckpoint._save_checkpoint", sync_first=True)
    timed(_CheckpointConnector, "dump_checkpoint", "Lightning's dump_checkpoint", sync_after=False)
    timed(Writer, "save_checkpoint", "AtomicCheckpointIO.save_checkpoint (training thread)", sync_after=False)
    timed(Writer, "_write", "AtomicCheckpointIO._write (in line on a CPU, thread on a GPU)", sync_after=False)
    timed(Writer, "_second_name", "AtomicCheckpointIO._second_name", sync_after=False)
    timed(Writer, "teardown", "AtomicCheckpointIO.teardown (waits for writes)", sync_after=False)
    timed(_EvaluationLoop, "run", "validation / test loop", sync_after=False)
    atexit.register(report)


if __name__ == "__main__":
    install()
    from covidseg.train import main

    sys.argv[0] = "covidseg-train"
    main()
