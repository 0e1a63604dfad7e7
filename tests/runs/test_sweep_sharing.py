"""What the jobs of a sweep in one process share: the loaded segmenter and its checkpoint's SHA-1."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

import covidseg.masks._source as masks_module
from covidseg.masks import mask_source


class _FakeSegmenter(torch.nn.Module):
    """Stands in for a loaded Segmenter: hparams is all MaskSource reads when it is built."""

    def __init__(self):
        super().__init__()
        self.hparams = SimpleNamespace(image_size=32, mean=0.5, std=0.25, postprocess={})


def _count_calls(monkeypatch, name: str, result=None) -> list:
    calls = []
    original = getattr(masks_module, name)

    def counted(path, *args):
        calls.append(path)
        return result() if result else original(path, *args)

    monkeypatch.setattr(masks_module, name, counted)
    return calls


def test_jobs_of_one_process_load_the_segmenter_once_and_a_changed_checkpoint_again(tmp_path, monkeypatch):
    monkeypatch.setattr(masks_module, "_SEGMENTERS", {})
    monkeypatch.setattr(masks_module, "_CHECKPOINT_DIGESTS", {})
    loads = _count_calls(monkeypatch, "load_segmenter", _FakeSegmenter)
    hashes = _count_calls(monkeypatch, "file_digest")
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights v1")
    config = {"ckpt_path": str(ckpt), "batch_size": 4}
    first = mask_source(config, tmp_path / "cache", "segmented")
    second = mask_source(config, tmp_path / "cache", "lungs_removed")
    assert len(loads) == 1 and len(hashes) == 1
    assert second.model is first.model and second.ckpt_digest == first.ckpt_digest
    other_settings = mask_source({**config, "postprocess": {"threshold": 0.3}}, tmp_path / "cache")
    assert other_settings.model is first.model and len(loads) == 1
    ckpt.write_bytes(b"weights v2, retrained")  # same path, new content: new network, new masks
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    third = mask_source(config, tmp_path / "cache", "segmented")
    assert len(loads) == 2 and len(hashes) == 2
    assert third.model is not first.model and third.ckpt_digest != first.ckpt_digest
    assert len(masks_module._SEGMENTERS) == 1  # the replaced checkpoint's network is let go
