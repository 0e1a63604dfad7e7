"""Image decoding conventions and the documented error (or skip) for each kind of bad input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.images import ImageCache, decode
from covidseg.data.manifest import read_manifest
from covidseg.data.selection import select_classes
from covidseg.errors import UserError
from tests.conftest import make_dataset

GRADIENT = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # 48 x 64, not square


def _save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "1", "JPEG"])
def test_every_image_mode_becomes_square_uint8_gray(tmp_path, mode):
    if mode == "I;16":
        image = Image.fromarray(GRADIENT.astype(np.uint16) * 16 + 1000)  # 12-bit range, offset
    elif mode == "JPEG":
        image = Image.fromarray(GRADIENT).convert("RGB")
    elif mode == "1":
        image = Image.fromarray(GRADIENT).convert("1")
    else:
        image = Image.fromarray(GRADIENT).convert(mode)
    path = _save(tmp_path, "x.jpg" if mode == "JPEG" else "x.png", image)
    array = decode(path, 32)
    assert array.shape == (32, 32) and array.dtype == np.uint8
    if mode != "1":
        # left-to-right gradient survives and spans (nearly) the full range
        assert array[:, 0].mean() < 20 and array[:, -1].mean() > 235
        assert (np.diff(array.mean(axis=0)) >= -1).all()


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 255  # top half opaque white, bottom half transparent white
    array = decode(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")), 8)
    assert (array[:4] == 255).all() and (array[4:] == 0).all()


def test_cache_hits_on_second_read_and_keys_by_content(tmp_path):
    path = _save(tmp_path, "x.png", Image.fromarray(GRADIENT))
    cache = ImageCache(tmp_path / "cache", 16)
    first, digest = cache.load(path)
    again, _ = cache.load(path)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, again)
    Image.fromarray(255 - GRADIENT).save(path)  # edited in place: must miss
    changed, new_digest = cache.load(path)
    assert new_digest != digest and cache.misses == 2
    assert not np.array_equal(first, changed)


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_csv_missing_columns(tmp_path):
    (tmp_path / "metadata.csv").write_text("file,label\na.png,covid\n")
    with pytest.raises(UserError, match=r"lacks column\(s\) \['path', 'patient_id'\]"):
        read_manifest(tmp_path)


def test_missing_image_files_are_listed(tmp_path):
    make_dataset(tmp_path, {"normal": 2, "covid": 2})
    (tmp_path / "covid" / "1.png").unlink()
    with pytest.raises(UserError, match=r"1 image file\(s\).*covid/1.png"):
        read_manifest(tmp_path)


def test_unknown_label_dropped_and_counted_or_error(tmp_path):
    make_dataset(tmp_path, {"normal": 4, "covid": 4, "tb": 3})
    table = read_manifest(tmp_path)
    kept, dropped = select_classes(table, ["normal", "covid"], "drop")
    assert dropped == {"tb": 3} and len(kept) == 8
    assert list(kept.drop_duplicates("label")["target"]) == [0, 1]
    with pytest.raises(UserError, match="tb"):
        select_classes(table, ["normal", "covid"], "error")
    with pytest.raises(UserError, match="no image has label"):
        select_classes(table, ["normal", "Covid"], "drop")


def test_evaluation_accepts_a_data_set_without_some_classes(tmp_path):
    make_dataset(tmp_path, {"covid": 4})
    kept, _ = select_classes(read_manifest(tmp_path), ["normal", "covid"], require_all=False)
    assert set(kept["target"]) == {1}
    with pytest.raises(UserError, match="no image has label"):
        select_classes(read_manifest(tmp_path), ["normal", "covid"])


def test_lung_masks_in_0_1_or_0_255_and_empty_masks(tmp_path):
    from covidseg.data.segmentation import LungMaskDataModule

    (tmp_path / "m").mkdir()
    rows = []
    for i, peak in enumerate([1, 255, 1, 255, 1, 255, 1, 255, 1, 255]):
        mask = np.zeros((20, 20), np.uint8)
        mask[5:15, 2:8] = peak
        Image.fromarray(GRADIENT[:20, :20]).save(tmp_path / "m" / f"i{i}.png")  # a mask has its image's size
        Image.fromarray(mask).save(tmp_path / "m" / f"m{i}.png")
        rows.append({"image": f"m/i{i}.png", "mask": f"m/m{i}.png"})
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    dm = LungMaskDataModule(str(tmp_path), image_size=20, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    for dataset in dm.datasets.values():
        assert (np.asarray(dataset.targets).sum(axis=(1, 2)) == 60).all()  # 10 x 6 lung pixels, any peak
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "m" / "m3.png")
    with pytest.raises(UserError, match=r"empty.*m/m3.png"):
        LungMaskDataModule(str(tmp_path), image_size=20, cache_dir=str(tmp_path / "cache")).setup()


def test_class_folders_without_csv(tmp_path):
    make_dataset(tmp_path, {"normal": 3, "covid": 2})
    (tmp_path / "metadata.csv").unlink()
    table = read_manifest(tmp_path)
    assert sorted(table["label"].unique()) == ["covid", "normal"]
    assert set(table["patient_id"]) == {"normal/0", "normal/1", "normal/2", "covid/0", "covid/1"}


def _datamodule(root, tmp_path, **kw):
    return CXRDataModule(root=str(root), image_size=16, cache_dir=str(tmp_path / "cache"), **kw)


def test_unreadable_image_errors_or_is_skipped_and_counted(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 20, "covid": 20})
    (data / "covid" / "3.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"covid/3.png.*data.on_bad_image=skip"):
        _datamodule(data, tmp_path).setup()
    dm = _datamodule(data, tmp_path, on_bad_image="skip")
    dm.setup()
    assert dm.stats["skipped_images"] == ["covid/3.png"] and dm.stats["n_skipped_images"] == 1
    assert sum(dm.stats[f"n_{s}"] for s in ("train", "val", "test")) == 39


def test_datamodule_tensors_and_class_weights(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 30, "covid": 10})
    dm = _datamodule(data, tmp_path, batch_size=4)
    dm.setup()
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.uint8 and targets.dtype == torch.int64
    x, _ = dm.on_after_batch_transfer((images, targets), 0)  # outside a fit: normalised, not augmented
    assert x.dtype.is_floating_point
    torch.testing.assert_close(x, (images.float() / 255 - dm.mean) / dm.std)
    counts = dm.class_counts("train")
    weights = dm.class_weights()
    assert weights[1] / weights[0] == pytest.approx(counts[0] / counts[1])
    assert _datamodule(data, tmp_path, balance="none").class_weights() is None
    table = pd.read_csv(data / "metadata.csv")
    assert "site" in read_manifest(data).columns and len(table) == 40  # extra columns are kept


# -- the image cache at rest (covidseg.data.store) ---------------------------------------------------------
def _pngs(folder, n, side=48):
    """n different PNGs (a gradient with a bright square at a position of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        array = np.tile(np.linspace(0, 200, side).astype(np.uint8), (side, 1))
        array[(i * 3) % (side - 8) :][:8, i % (side - 8) :][:, :8] = 255
        paths.append(str(_save(folder, f"{i}.png", Image.fromarray(array))))
    return paths


def _count_file_reads(monkeypatch, folder):
    """Every open of a file under `folder` (builtins and io.open, as Path.read_bytes uses)."""
    import builtins
    import io

    opened = []
    real_open, real_io_open = builtins.open, io.open

    def counting(opener):
        def wrapped(file, *args, **kwargs):
            if str(folder) in str(file):
                opened.append(str(file))
            return opener(file, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", counting(real_open))
    monkeypatch.setattr(io, "open", counting(real_io_open))
    return opened


def test_a_warm_load_reads_no_image_file_and_no_array_and_gives_the_same_arrays(tmp_path, monkeypatch):
    from covidseg.data import file_index

    monkeypatch.setattr(file_index, "RACY_NS", 0)  # files written a moment ago are trusted at once
    paths = _pngs(tmp_path / "img", 6)
    first, digests, _ = ImageCache(tmp_path / "cache", 16).load_many(paths)
    cold = np.asarray(first)
    opened = _count_file_reads(monkeypatch, tmp_path / "img")
    cache = ImageCache(tmp_path / "cache", 16)
    warm, warm_digests, _ = cache.load_many(paths)
    assert opened == [] and warm._data is None  # neither image bytes nor array data read yet
    assert (cache.hits, cache.misses, cache.index.hashed) == (6, 0, 0) and warm_digests == digests
    np.testing.assert_array_equal(warm[:], cold)
    np.testing.assert_array_equal(cold, [decode(p, 16) for p in paths])


@pytest.mark.parametrize("restore_size_and_mtime", [False, True])
def test_a_file_replaced_in_place_is_hashed_and_decoded_again(tmp_path, monkeypatch, restore_size_and_mtime):
    import os
    import time

    from covidseg.data import file_index

    monkeypatch.setattr(file_index, "RACY_NS", 0)  # so that only the stat fields can tell
    path = _pngs(tmp_path / "img", 1)[0]
    before = os.stat(path)
    first, digest = ImageCache(tmp_path / "cache", 16).load(path)
    time.sleep(0.02)
    replacement = 255 - np.asarray(Image.open(path))
    Image.fromarray(replacement).save(path)
    if restore_size_and_mtime:
        with open(path, "ab") as handle:  # pad to the old size (PNG readers ignore trailing bytes)
            handle.write(b"\0" * (before.st_size - os.path.getsize(path)))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    cache = ImageCache(tmp_path / "cache", 16)
    again, new_digest = cache.load(path)
    assert new_digest != digest and (cache.index.hashed, cache.misses) == (1, 1)
    np.testing.assert_array_equal(again, decode(path, 16))
    assert not np.array_equal(again, first)


def test_a_moved_file_is_hashed_but_not_decoded(tmp_path):
    paths = _pngs(tmp_path / "img", 3)
    ImageCache(tmp_path / "cache", 16).load_many(paths)
    moved = tmp_path / "elsewhere" / "renamed.png"
    moved.parent.mkdir()
    Path(paths[1]).rename(moved)
    cache = ImageCache(tmp_path / "cache", 16)
    images, _, _ = cache.load_many([paths[0], str(moved), paths[2]])
    assert (cache.hits, cache.misses) == (3, 0) and cache.index.hashed >= 1
    np.testing.assert_array_equal(images[1], decode(moved, 16))


def test_an_interrupted_cold_start_is_reused_and_equals_a_fresh_one(tmp_path, monkeypatch):
    from covidseg.data import images as images_module

    paths = _pngs(tmp_path / "img", 10)
    real_task, calls = images_module.decode_task, []

    def failing_after_four(task):
        calls.append(task)
        if len(calls) > 4:
            raise RuntimeError("interrupted")
        return real_task(task)

    monkeypatch.setattr(images_module, "decode_task", failing_after_four)
    with pytest.raises(RuntimeError, match="interrupted"):
        ImageCache(tmp_path / "cache", 16, workers=1).load_many(paths)
    monkeypatch.setattr(images_module, "decode_task", real_task)
    resumed = ImageCache(tmp_path / "cache", 16)
    arrays = resumed.load_many(paths)[0][:]
    assert (resumed.hits, resumed.misses) == (4, 6)
    np.testing.assert_array_equal(arrays, ImageCache(tmp_path / "fresh", 16).load_many(paths)[0][:])


KILLED_COLD_START = """
import os, sys
from covidseg.data import images
images.APPEND_BYTES = 2 * 16 * 16  # batches of two images
real, done = images.decode_task, []
def dying(task):
    if len(done) == 5:
        os._exit(9)  # killed: no clean-up runs
    done.append(task)
    return real(task)
images.decode_task = dying
images.ImageCache(sys.argv[1], 16, workers=1).load_many(sys.argv[2:])
"""


def test_a_cold_start_killed_mid_way_keeps_its_committed_batches(tmp_path):
    import os
    import subprocess
    import sys

    paths = _pngs(tmp_path / "img", 9)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-c", KILLED_COLD_START, str(tmp_path / "cache"), *paths]
    killed = subprocess.run(command, env=env)
    assert killed.returncode == 9
    cache = ImageCache(tmp_path / "cache", 16)
    arrays = cache.load_many(paths)[0][:]
    assert cache.hits == 4 and cache.misses == 5  # two batches of two were committed, the fifth was not
    np.testing.assert_array_equal(arrays, [decode(p, 16) for p in paths])


def test_parallel_decoding_gives_the_serial_arrays_and_the_first_refusal_in_path_order(tmp_path):
    from covidseg.data.parallel import PARALLEL_MIN

    paths = _pngs(tmp_path / "img", PARALLEL_MIN + 4)
    parallel = ImageCache(tmp_path / "a", 16, workers=2)
    serial = ImageCache(tmp_path / "b", 16, workers=1)
    np.testing.assert_array_equal(parallel.load_many(paths)[0][:], serial.load_many(paths)[0][:])
    assert parallel.misses == serial.misses == len(paths)

    Path(paths[20]).write_bytes(Path(paths[20]).read_bytes()[:80])  # header fine, pixels truncated
    Path(paths[30]).write_bytes(b"not an image")  # refused by the header check
    for workers in (1, 2):
        with pytest.raises(UserError, match=r"/20\.png"):
            ImageCache(tmp_path / f"c{workers}", 16, workers=workers).load_many(paths)
    skipping = ImageCache(tmp_path / "d", 16, workers=2)
    images, digests, skipped = skipping.load_many(paths, "skip")
    assert skipped == [20, 30] and len(images) == len(digests) == len(paths) - 2
    assert skipping.skip_reasons == {"unreadable": 2} and "20.png" in skipping.skipped_problems[0]
