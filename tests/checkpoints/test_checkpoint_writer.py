"""covidseg.checkpoints: checkpoints written atomically, once per content, in the background on
accelerators, onto the memory of the file they replace."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from covidseg.checkpoints import AtomicCheckpointIO, read_checkpoint

HINT = "Train one first."


def test_checkpoint_writes_are_atomic_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.arange(4.0)}}, path)
    written = read_checkpoint(path, HINT)
    assert written["epoch"] == 1 and torch.equal(written["state_dict"]["w"], torch.arange(4.0))

    def killed_while_writing(obj, file):  # writes part of the file, then dies
        Path(file).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2}, path)
    assert read_checkpoint(path, HINT)["epoch"] == 1  # the previous checkpoint is whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # and nothing half-written is left


def test_background_writes_keep_the_weights_of_the_save_and_their_order(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO(background=True)
    weights = torch.zeros(1000)
    real_save = torch.save
    started = []
    released = threading.Event()

    def held_save(obj, file):  # the file is written only once the training thread has gone on
        started.append(obj["epoch"])
        assert released.wait(timeout=30), "the write was not left to the background"
        real_save(obj, file)

    monkeypatch.setattr(torch, "save", held_save)
    for epoch in range(3):
        io.save_checkpoint({"epoch": epoch, "state_dict": {"w": weights}}, path)
        weights += 1  # an optimizer step, in place, before the write is done
    assert not path.exists()  # every save returned while the first write was still held
    released.set()
    loaded = io.load_checkpoint(path, weights_only=True)  # a read waits for the writes in flight
    assert loaded["epoch"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.full((1000,), 2.0))
    io.teardown()
    assert started == [0, 1, 2]


def test_a_failed_background_write_is_raised_and_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO(background=True)
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, path)
    io.wait()

    def disk_full(obj, file):
        Path(file).write_bytes(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(OSError, match="No space left"):
        io.teardown()  # Lightning's end of fit: the error is not lost in the thread
    assert read_checkpoint(path, HINT)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_is_said_in_plain_words(tmp_path, monkeypatch):
    """torch.save on a full disk says only 'unexpected pos ...': the error names the file, the free space and
    what to do, and the previous checkpoint stays whole."""
    path = tmp_path / "best.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, path)

    def full(obj, file):
        Path(file).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1247 vs 1136")

    monkeypatch.setattr(torch, "save", full)
    usage = SimpleNamespace(total=10**9, used=10**9 - 3000, free=3000)
    monkeypatch.setattr("shutil.disk_usage", lambda folder: usage)
    with pytest.raises(OSError) as raised:
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.ones(1000)}}, path)
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert str(path) in message and "unexpected pos" in message and "0 MB free" in message
    assert "disk is full" in message and "hydra.run.dir" in message
    usage.free = 10**9  # the same error with room on the disk is torch's own, unchanged
    with pytest.raises(RuntimeError, match=r"^\[enforce fail"):
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.ones(1000)}}, path)
    monkeypatch.undo()
    assert read_checkpoint(path, HINT)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]


def test_cpu_checkpoints_are_written_in_line(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()  # background only for weights on an accelerator

    def no_thread(*args, **kwargs):
        pytest.fail("no thread for CPU weights")

    monkeypatch.setattr("covidseg.checkpoints._write.ThreadPoolExecutor", no_thread)
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, path)
    assert read_checkpoint(path, HINT)["epoch"] == 1  # on disk when save_checkpoint returns


# -- one write per content ------------------------------------------------------------------------------
def _checkpoint(epoch: int, weights: torch.Tensor) -> dict:
    """A checkpoint as Lightning builds it: large weights (keyed by place and version), small tensors."""
    return {"epoch": epoch, "state_dict": {"w": weights}, "rng": torch.arange(8, dtype=torch.uint8)}


@pytest.mark.parametrize("background", [False, True])
def test_the_same_checkpoint_saved_twice_is_written_once(tmp_path, monkeypatch, background):
    """best.ckpt then last.ckpt after an epoch that improved: one torch.save, two names of one file."""
    io = AtomicCheckpointIO(background=background)
    weights = torch.zeros(300_000)  # above the by-value size: keyed by place and version counter
    writes = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (writes.append(obj["epoch"]), real_save(obj, f)))
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(0, weights), best)
    io.save_checkpoint(_checkpoint(0, weights), last)  # a new dict, same content
    io.wait()
    assert writes == [0] and best.stat().st_ino == last.stat().st_ino
    weights += 1  # a training step: the version counter moves
    io.save_checkpoint(_checkpoint(1, weights), last)
    io.wait()
    assert writes == [0, 1] and best.stat().st_ino != last.stat().st_ino  # the names part
    assert torch.equal(read_checkpoint(best, HINT)["state_dict"]["w"], torch.zeros(300_000))
    assert torch.equal(read_checkpoint(last, HINT)["state_dict"]["w"], torch.ones(300_000))
    io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.parametrize(
    "change",
    ["in place", "small tensor", "plain value", "unknown object", "no version counter"],
)
def test_a_checkpoint_that_differs_in_anything_is_written_again(tmp_path, change):
    io = AtomicCheckpointIO()
    weights = torch.zeros(300_000)
    first = _checkpoint(0, weights)
    io.save_checkpoint(first, tmp_path / "best.ckpt")
    second = _checkpoint(0, weights)
    if change == "in place":
        weights[7] = 1.0  # same tensor, same place: only its version counter tells
    elif change == "small tensor":
        second["rng"] = second["rng"].clone().fill_(3)
    elif change == "plain value":
        second["epoch"] = 1
    elif change == "no version counter":
        with torch.inference_mode():  # a large tensor made under inference mode could change unseen
            first["state_dict"]["scores"] = torch.zeros(300_000)
        second["state_dict"]["scores"] = first["state_dict"]["scores"]
        io.save_checkpoint(first, tmp_path / "best.ckpt")
    else:
        second["extra"] = {1, 2}  # a kind the key does not know (a set) is never taken as unchanged
        first["extra"] = second["extra"]
    io.save_checkpoint(second, tmp_path / "last.ckpt")
    assert (tmp_path / "best.ckpt").stat().st_ino != (tmp_path / "last.ckpt").stat().st_ino
    assert read_checkpoint(tmp_path / "last.ckpt", HINT)["epoch"] == second["epoch"]


def test_without_hard_links_the_second_name_is_a_copy(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    weights = torch.ones(300_000)

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    io.save_checkpoint(_checkpoint(0, weights), tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(0, weights), tmp_path / "last.ckpt")
    best, last = (read_checkpoint(tmp_path / n, HINT) for n in ("best.ckpt", "last.ckpt"))
    assert torch.equal(best["state_dict"]["w"], last["state_dict"]["w"])
    assert (tmp_path / "best.ckpt").stat().st_ino != (tmp_path / "last.ckpt").stat().st_ino


def test_no_second_name_for_a_file_whose_write_failed(tmp_path, monkeypatch):
    """A failed best.ckpt write kept the older file: last.ckpt must not become a name of that."""
    io = AtomicCheckpointIO(background=True)
    weights = torch.zeros(300_000)
    io.save_checkpoint(_checkpoint(0, weights), tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(0, weights), tmp_path / "last.ckpt")
    io.wait()
    weights += 1

    released = threading.Event()

    def disk_full(obj, file):  # fails once the second save is queued behind it
        released.wait(timeout=30)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    io.save_checkpoint(_checkpoint(1, weights), tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(1, weights), tmp_path / "last.ckpt")
    released.set()
    with pytest.raises(OSError, match="No space left"):
        io.teardown()
    for name in ("best.ckpt", "last.ckpt"):
        assert read_checkpoint(tmp_path / name, HINT)["epoch"] == 0


def test_replaced_files_are_kept_until_the_next_save_and_then_removed(tmp_path):
    """The replaced file is deleted before the next write (which reuses its memory), and at the end."""
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.previous"
    (tmp_path / ".best.ckpt.previous").write_bytes(b"left by a run that was killed")
    stale.write_bytes(b"left by a run that was killed")
    io.save_checkpoint(_checkpoint(0, torch.zeros(300_000)), last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the stale copies are gone
    first = last.stat().st_ino
    io.save_checkpoint(_checkpoint(1, torch.ones(300_000)), last)
    assert stale.stat().st_ino == first and read_checkpoint(last, HINT)["epoch"] == 1
    io.save_checkpoint(_checkpoint(2, torch.ones(300_000)), last)
    assert stale.stat().st_ino not in (first, last.stat().st_ino)  # the one before was dropped
    io.remove_checkpoint(last)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    io.save_checkpoint(_checkpoint(3, torch.ones(300_000)), last)
    io.save_checkpoint(_checkpoint(4, torch.ones(300_000)), last)
    io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
