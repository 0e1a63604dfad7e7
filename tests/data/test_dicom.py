"""DICOM input: decoded into the same convention as every PNG, through the one decode every stage uses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from covidseg.data.images import BadImage, ImageCache, decode
from covidseg.data.manifest import load_manifest
from tests.data.dicom_files import write_dicom

SIZE = 40


def _pixels(bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if bits <= 8 else np.uint16
    return rng.integers(0, 2**bits, (SIZE, SIZE + 8), dtype=dtype)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_monochrome1_and_monochrome2_of_the_same_pixels_give_the_same_array(tmp_path, bits):
    pixels = _pixels(bits)
    m2 = write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", bits_stored=bits)
    # MONOCHROME1 stores the same picture with high values dark: the inverted values
    m1 = write_dicom(tmp_path / "m1.dcm", (2**bits - 1 - pixels).astype(pixels.dtype), "MONOCHROME1", bits)
    a, b = decode(m2, SIZE), decode(m1, SIZE)
    np.testing.assert_array_equal(a, b)
    # and the PNG of the same pixels (8 bit: values as they are; 16 bit: stretched min..max) decodes alike
    png = tmp_path / "same.png"
    Image.fromarray(pixels if bits == 8 else pixels.astype(np.uint16)).save(png)
    np.testing.assert_array_equal(a, decode(png, SIZE))
    assert a.std() > 30  # not a flat image that would match anything


def test_16_bit_with_rescale_and_a_voi_window_maps_the_window_to_0_255(tmp_path):
    stored = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # a 12-bit ramp, 64 x 64 px
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 2001.0
    window, rescale = (center, width), (slope, intercept)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=window, rescale=rescale)
    x = stored.astype(float) * slope + intercept  # the modality LUT: output units
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR): 0 at and below c - 0.5 - (w-1)/2, 1 above c - 0.5 + (w-1)/2
    share = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_array_equal(decode(path, 64), np.round(share * 255).astype(np.uint8))
    assert (x < center - width / 2).sum() > 500 and (x > center + width / 2).sum() > 500  # both ends clip
    assert ((share[0] > 0) & (share[0] < 1)).sum() >= 10  # and a ramp inside the window


def test_a_voi_lut_sequence_is_applied(tmp_path):
    pixels = _pixels(8)
    entries = [min(255, 2 * i) for i in range(256)]
    path = write_dicom(tmp_path / "lut.dcm", pixels, voi_lut=(0, 8, entries))
    expected = np.minimum(255, 2 * pixels.astype(int)).astype(np.uint8)
    np.testing.assert_array_equal(decode(path, SIZE), _resized(expected))


def _resized(gray: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(gray).resize((SIZE, SIZE), Image.Resampling.BOX))


def test_colour_dicom_becomes_luma_like_a_colour_png(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb)
    png = tmp_path / "rgb.png"
    Image.fromarray(rgb, "RGB").save(png)
    np.testing.assert_array_equal(decode(path, SIZE), decode(png, SIZE))


def _compressed(tmp_path, name: str, syntax) -> tuple:
    pixels = np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (SIZE, 1))
    path = write_dicom(tmp_path / name, pixels)
    ds = dcmread(path)
    if syntax == RLELossless:
        ds.compress(RLELossless)  # pydicom's own encoder
    else:
        jpeg = io.BytesIO()
        Image.fromarray(pixels).save(jpeg, format="JPEG", quality=95)
        ds.PixelData = encapsulate([jpeg.getvalue()])
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path)
    return path, pixels


def test_rle_compressed_pixels_decode_exactly(tmp_path):
    path, pixels = _compressed(tmp_path, "rle.dcm", RLELossless)  # pydicom's own encoder and decoder
    np.testing.assert_array_equal(decode(path, SIZE), pixels)


@pytest.mark.parametrize("plugin", ["pylibjpeg", "pillow"])
def test_jpeg_compressed_pixels_decode_through_each_installed_plugin(tmp_path, monkeypatch, plugin):
    if plugin == "pylibjpeg":
        pytest.importorskip("pylibjpeg")
        pytest.importorskip("libjpeg")  # pylibjpeg-libjpeg, the `dicom` extra
    decoder = get_decoder(JPEGBaseline8Bit)
    if plugin not in decoder.available_plugins:
        pytest.skip(f"pydicom's {plugin} JPEG plugin is not available here")
    monkeypatch.setattr(decoder, "_available", {plugin: decoder._available[plugin]})  # only this one
    path, pixels = _compressed(tmp_path, "jpeg.dcm", JPEGBaseline8Bit)
    assert np.abs(decode(path, SIZE).astype(int) - pixels).mean() < 2  # lossy, but the same picture


def test_a_compressed_file_without_a_decoder_is_a_clear_error_and_skipped_in_skip_mode(tmp_path, monkeypatch):
    path, _ = _compressed(tmp_path, "jpeg.dcm", JPEGBaseline8Bit)
    decoder = get_decoder(JPEGBaseline8Bit)
    # As on a machine without pylibjpeg and pillow's JPEG plugin: nothing available, one plugin missing
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    with pytest.raises(BadImage) as err:
        decode(path, SIZE)
    message = str(err.value)
    assert str(path) in message and "JPEG Baseline" in message and "pylibjpeg-libjpeg" in message
    assert "covidseg[dicom]" in message and err.value.reason == "no_decoder"
    cache = ImageCache(tmp_path / "cache", SIZE)
    images, _, skipped = cache.load_many([str(path)], "skip")
    assert len(images) == 0 and skipped == [0] and cache.skip_reasons == {"no_decoder": 1}
    assert "JPEG Baseline" in cache.skipped_problems[0]


def test_files_that_are_not_usable_dicom_images_are_refused_naming_them(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    tiny = write_dicom(tmp_path / "tiny.dcm", _pixels(8)[:16, :16])
    no_pixels = write_dicom(tmp_path / "report.dcm", _pixels(8))
    ds = dcmread(no_pixels)
    del ds.PixelData, ds.Rows, ds.Columns
    ds.save_as(no_pixels)
    cases = {
        junk: ("unreadable", "junk.dcm"),
        tiny: ("too_small", "16x16"),
        no_pixels: ("unreadable", "no Rows"),
    }
    for path, (reason, shown) in cases.items():
        with pytest.raises(BadImage) as err:
            decode(path, SIZE, min_side=32)
        assert err.value.reason == reason and shown in str(err.value) and str(path) in str(err.value)


def test_dicom_files_in_class_folders_are_images_and_cached(tmp_path):
    for label in ("normal", "covid"):
        (tmp_path / label).mkdir()
        for i in range(2):
            write_dicom(tmp_path / label / f"{i}.dcm", _pixels(12, seed=i), bits_stored=12)
    table, report = load_manifest(tmp_path)
    assert len(table) == 4 and report.unsupported_files == {}
    cache = ImageCache(tmp_path / "cache", SIZE)
    first, _, _ = cache.load_many(list(table["file"]))
    again, _, _ = cache.load_many(list(table["file"]))
    assert cache.misses == 4 and cache.hits == 4
    np.testing.assert_array_equal(first, again)
