"""How covidseg's trainers write checkpoints (best.ckpt, last.ckpt): atomically, once per content, in the
background on accelerators. Reading them is covidseg.checkpoints' job."""

from __future__ import annotations

import enum
import errno
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from covidseg.checkpoints._read import OPERATING_POINT_KEY, load_mapped


class AtomicCheckpointIO(TorchCheckpointIO):
    """How covidseg's trainers write checkpoints (best.ckpt, last.ckpt): one torch.save straight into a
    temporary file beside the target, then a rename over it.

    - Atomic: a run killed while writing keeps its previous last.ckpt whole, so resume=true still has one.
    - Cheaper per epoch than Lightning's default writer, which serialises the whole checkpoint (weights and
      optimizer state, 134 MB for resnet18 + Adam) into memory first and then copies it to the file.
    - With zip CRC-32s (torch's default), which covidseg.checkpoints checks on every load: a bit that flips
      on disk or in a copy is refused there instead of loading as a changed weight. They cost little:
      benchmarks/checkpoint_crc.py times a 134 MB write with and without them.
    - In the background when the weights live on an accelerator (`background=None`, the default): the
      tensors are copied on the device (a few ms) and a thread writes the copy while training goes on. On a
      GPU an epoch of a small data set takes about as long as writing two 134 MB files, so writing them in
      line would halve the speed. On a CPU the copy would be anonymous memory for nothing gained (the
      writes are a small share of a CPU epoch), so CPU checkpoints are written in line. `True` / `False`
      force either. Writes stay in order; a read, a removal, and Lightning's teardown at the end of fit
      wait for the writes in flight, and a write's error is raised there (or at the next save).
    - Written once per content: a checkpoint identical to the one this writer saved just before (best.ckpt
      and last.ckpt after an epoch that improved: same step, same weights, same state) becomes a second
      name (hard link) of that file instead of a second 134 MB write; where the file system has no hard
      links it is copied. Files are only ever replaced by rename, so the two names part at the next write;
      a checkpoint changed in place by other code (torch.save over it) would change both names.
    """

    def __init__(self, background: bool | None = None):
        super().__init__()
        self.background = background
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: list[Future] = []
        # The last save: its content key, its file, the future of its background write (None: written in
        # line), and its tensors (held so that no new tensor can take their memory, and with it their place
        # in a key, while the key is kept).
        self._last: tuple[Any, Path, Future | None, list[torch.Tensor]] | None = None
        self._spares: list[Path] = []  # replaced files, kept until the next save or teardown (_replacing)
        self._stream: torch.cuda.Stream | None = None  # the background writer's CUDA stream

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write `checkpoint` to `path` (Lightning's CheckpointIO hook), as the class describes.

        A checkpoint equal to the one saved just before becomes a second name of that file; otherwise the
        weights are written in line, or copied and written by the background thread.

        Args:
            checkpoint: Lightning's checkpoint dictionary; with `background`, copied before this returns.
            path: the target file, replaced by rename.
            storage_options: not supported; Lightning passes None.

        Raises:
            TypeError: `storage_options` was given.
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}.")
        target = Path(path)
        tensors = _tensors(checkpoint)
        key = _content_key(checkpoint)
        last, self._last = self._last, None
        background = self.background
        if background is None:
            background = any(t.device.type != "cpu" for t in tensors)
        if last is not None and last[0] == key and last[1] != target:
            job: Callable[[], None] = partial(self._second_name, last[1], last[2], target)
        elif background:
            # The copy is taken now, on this thread: training changes the weights in place from the next step.
            snapshot = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().clone())
            job = partial(self._write, snapshot, target, self._copied_event(tensors))
        else:
            job = partial(self._write, checkpoint, target)
        if not background:
            self.wait()  # after the writes already queued, not before them
            job()
            self._last = (key, target, None, tensors)
            return
        self._raise_failed()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidseg-checkpoint")
        future = self._writer.submit(job)
        self._in_flight.append(future)
        self._last = (key, target, future, tensors)

    def _write(
        self, checkpoint: dict[str, Any], target: Path, copied: torch.cuda.Event | None = None
    ) -> None:
        with self._replacing(target) as partial_file, self._side_stream(copied):
            try:
                torch.save(checkpoint, partial_file)
            except (OSError, RuntimeError) as error:
                said = _write_error(target, checkpoint, error)
                if said is None:  # not about the file or the disk: torch's own error as it is
                    raise
                raise said from error

    def _copied_event(self, tensors: list[torch.Tensor]) -> torch.cuda.Event | None:
        """On a CUDA device: an event on the training stream after the snapshot's copies, for the writer's
        stream to wait on."""
        device = next((t.device for t in tensors if t.is_cuda), None)
        if device is None:
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return torch.cuda.current_stream(device).record_event()

    @contextmanager
    def _side_stream(self, copied: torch.cuda.Event | None) -> Iterator[None]:
        """torch.save's device-to-host copies on the writer's own stream: on the training stream every copy
        would wait for the training kernels queued before it and hold up those queued after it."""
        if copied is None or self._stream is None:
            yield
            return
        self._stream.wait_event(copied)  # the snapshot is complete
        with torch.cuda.stream(self._stream):
            yield

    def _second_name(self, source: Path, source_write: Future | None, target: Path) -> None:
        """`target` becomes the same file as `source`, saved just before with the same content."""
        if source_write is not None and source_write.exception() is not None:
            # The source kept its older content: a second name would be a wrong checkpoint, not a copy.
            raise OSError(f"{target} was not written: writing {source} failed.")
        with self._replacing(target) as partial_file:
            try:
                os.link(source, partial_file)
            except OSError:  # no hard links here (some network and FAT file systems): a copy
                shutil.copyfile(source, partial_file)

    @contextmanager
    def _replacing(self, target: Path) -> Iterator[Path]:
        """A temporary name beside `target` to write; renamed over `target` when the block succeeds.

        The file it replaces stays on disk under a spare name until the next save starts and is deleted
        then, before anything is written, so that the new file takes the pages the old one frees. Deleted
        by the rename instead, the old file's pages are freed only after the new one has taken other
        memory: on a virtual machine whose memory is backed on first touch that made each 134 MB write
        about five times slower (measured on the 2-core machine: 210 vs 41 ms)."""
        self._drop_spares()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial_file = target.with_name(f".{target.name}.{os.getpid()}.partial")
        spare = _spare(target)
        try:
            # Ours were dropped above: any other is a stale copy left by a run that was killed.
            for stale in target.parent.glob(f".*{_SPARE_SUFFIX}"):
                stale.unlink(missing_ok=True)
            partial_file.unlink(missing_ok=True)
            yield partial_file
            try:
                os.link(target, spare)
                self._spares.append(spare)
            except OSError:  # no file to keep yet, or no hard links here: replaced the usual way
                pass
            os.replace(partial_file, target)
        finally:
            partial_file.unlink(missing_ok=True)

    def _drop_spares(self) -> None:
        spares, self._spares = self._spares, []
        for spare in spares:
            spare.unlink(missing_ok=True)

    def _raise_failed(self) -> None:
        """The first error of a finished background write, raised here (the file kept its previous
        contents: the write never replaced it)."""
        done = [f for f in self._in_flight if f.done()]
        self._in_flight = [f for f in self._in_flight if not f.done()]
        for future in done:
            future.result()

    def wait(self) -> None:
        """Block until every checkpoint write in flight is on disk; raise the first one's error."""
        in_flight, self._in_flight = self._in_flight, []
        errors = [f.exception() for f in in_flight]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the checkpoint at `path` and its spare, once the writes in flight (maybe to it) are done."""
        self.wait()
        if self._last is not None and self._last[1] == Path(path):
            self._last = None  # no longer a file to give a second name to
        super().remove_checkpoint(path)
        _spare(Path(path)).unlink(missing_ok=True)

    def teardown(self) -> None:
        """Lightning calls this at the end of fit / test: every checkpoint is written before it returns."""
        try:
            self.wait()
            self._drop_spares()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        """Lightning's reads (resume, trainer.test on best.ckpt) memory-mapped like covidseg's own
        (load_mapped); the mapping is private, so tensors written after loading (optimizer state) never
        reach the file."""
        self.wait()
        if not weights_only:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_mapped(path, map_location=map_location)


_SPARE_SUFFIX = ".previous"


def store_operating_point(path: str | Path, point: Mapping[str, Any]) -> None:
    """Add a classifier's operating point to its checkpoint (OPERATING_POINT_KEY; read it back with
    covidseg.checkpoints.operating_point), rewritten by AtomicCheckpointIO: read with its CRCs checked,
    written whole with new ones to a temporary file and renamed over `path`. A file that shared its content
    with `path` (last.ckpt after an improving last epoch, a hard link) keeps its own: the rename parts them.

    Args:
        path: the checkpoint (best.ckpt).
        point: rule, threshold, positive_class, chosen_on, n_val and what else describes the choice.
    """
    checkpoint = load_mapped(path, map_location="cpu")
    checkpoint[OPERATING_POINT_KEY] = dict(point)
    writer = AtomicCheckpointIO(background=False)
    try:
        writer.save_checkpoint(checkpoint, path)
    finally:
        writer.teardown()


def _write_error(target: Path, checkpoint: dict[str, Any], error: BaseException) -> OSError | None:
    """A failed torch.save said with the disk's free space (on a full disk torch's zip writer reports only
    a file position it did not expect: 'unexpected pos ...'); None for an error that is neither an OSError
    nor a disk short of space."""
    needed = sum(t.numel() * t.element_size() for t in _tensors(checkpoint))
    try:
        free: int | None = shutil.disk_usage(target.parent).free
    except OSError:
        free = None
    full = free is not None and free < 2 * needed
    if not full and not isinstance(error, OSError):
        return None
    where = f"{free / 1e6:,.0f} MB free" if free is not None else "free space unknown"
    message = (
        f"Could not write checkpoint {target}: {error}. {where} in {target.parent}; this checkpoint needs "
        f"about {needed / 1e6:,.0f} MB (twice that while the previous file is replaced)."
    )
    if full:
        message += " The disk is full: free space there, or run in a folder on a larger disk (hydra.run.dir)."
        return OSError(errno.ENOSPC, message)
    return OSError(getattr(error, "errno", None) or errno.EIO, message)


def _spare(target: Path) -> Path:
    return target.with_name(f".{target.name}{_SPARE_SUFFIX}")


def _tensors(collection: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    apply_to_collection(collection, torch.Tensor, found.append)
    return found


_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, Path, enum.Enum)
_BY_VALUE = 1 << 16  # CPU tensors up to 64 KiB are keyed by their bytes (counters, random states)
_SMALL = 64  # device tensors without a version counter are keyed by value up to this many elements


def _content_key(value: Any) -> Any:
    """A value equal for two checkpoints with the same content, without reading large tensors: plain values
    as they are; small CPU tensors by their bytes; other tensors by where their data lives and their version
    counter (bumped by every in-place change, so an optimizer step changes it), so that device tensors are
    not copied to the host (one synchronisation each). Anything else is unequal to everything (an object of
    unknown kind could have changed without a trace)."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            return object()
        head = (value.dtype, value.device, tuple(value.shape))
        if value.numel() * value.element_size() <= _BY_VALUE and value.device.type == "cpu":
            data = value.detach().contiguous().flatten().view(torch.uint8)
            return ("bytes", *head, data.numpy().tobytes())
        if value.is_inference():  # no version counter: e.g. a score computed under inference mode
            if value.numel() <= _SMALL:
                return ("values", *head, tuple(value.detach().cpu().flatten().tolist()))
            return object()
        storage = value.untyped_storage()
        return ("tensor", *head, value.stride(), value.storage_offset(), storage.data_ptr(), value._version)
    if isinstance(value, Mapping):
        return (type(value), tuple((_content_key(k), _content_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_content_key(v) for v in value))
    if isinstance(value, _PLAIN):
        return (type(value), value)
    return object()
