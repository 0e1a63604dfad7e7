"""Offline tests of scripts/fetch_data.py's lungs-covid and external-actualmed builders, on tiny fake
downloads made in the test (no network, about a second)."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.data.test_fetch_data import IEEE_CSV, darkcovidnet_tree, fd, openist_tree, save, zip_tree

__all__ = ["fd"]  # the script, loaded by path (a module fixture of test_fetch_data)

# ieee8023 rows for lungs-covid beside test_fetch_data's (patient 46 is covid-cxr's: left out).
MORE_IEEE_ROWS = (
    "300,0,F,50,Pneumonia/Viral/COVID-19,PA,lung-a.jpg\n"
    '300,4,F,50,"COVID-19, ARDS",AP Supine,lung-b.png\n'
    "301,,M,,Pneumonia/Viral/COVID-19,L,lateral.jpg\n"
    "302,,M,,Pneumonia/Viral/SARS,PA,sars.jpg\n"
    "303,,M,,Pneumonia/Viral/COVID-19,AP,gone.jpg\n"
    "304,,M,,Pneumonia/Viral/COVID-19,PA,odd-size.jpg\n"
    "305,,M,,Pneumonia/Viral/COVID-19,PA,no-mask.jpg\n"
)
# The header of the reference copy's lungs-covid/metadata.csv.
LUNGS_COVID_HEADER = ["image", "mask", "patient_id", "finding", "view", "source", "original_name"]
ACTUALMED_HEADER = "patientid,offset,sex,age,finding,view,modality,imagename,notes\n"


def lung_mask(size: tuple[int, int]) -> Image.Image:
    """V7 Labs style: lung 255 with a 127-valued rim (which counts as background), on 0."""
    width, height = size
    mask = Image.new("L", size, 0)
    mask.paste(127, (width // 8, height // 8, width // 2, height - height // 8))
    mask.paste(255, (width // 8 + 2, height // 8 + 2, width // 2 - 2, height - height // 8 - 2))
    return mask


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fake_wheel(path: Path, masks: dict[str, Image.Image]) -> Path:
    """A torchxrayvision wheel holding only the V7 Labs mask zip (masks are PNG whatever their suffix)."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("semantic_masks_v7labs_lungs/", b"")
        for name, mask in masks.items():
            zf.writestr(f"semantic_masks_v7labs_lungs/{name}", png_bytes(mask))
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("torchxrayvision/__init__.py", "")
        whl.writestr("torchxrayvision/data/semantic_masks_v7labs_lungs.zip", inner.getvalue())
    return path


def ieee_table(tmp_path: Path, rows: str) -> pd.DataFrame:
    from fetch_sets.covid_cxr import read_ieee_table

    csv = tmp_path / "ieee.csv"
    csv.write_text("patientid,offset,sex,age,finding,view,filename\n" + rows)
    return read_ieee_table(csv, {"finding", "view"})


def test_select_pairs_keeps_frontal_covid_images_with_a_mask(fd, tmp_path):
    from fetch_sets.lungs_covid import is_covid

    assert is_covid("Pneumonia/Viral/COVID-19") and is_covid("COVID-19, ARDS") and is_covid("covid-19")
    assert not is_covid("Pneumonia/Viral/SARS") and not is_covid("No Finding")
    table = ieee_table(tmp_path, MORE_IEEE_ROWS + "300,9,F,50,COVID-19,ap supine,lung-a.jpg\n")
    masks = {"lung-a.jpg", "lung-b.png", "lateral.jpg", "sars.jpg", "gone.jpg", "odd-size.jpg"}
    pairs = fd.select_pairs(table, masks, exclude={"ieee-304"})
    assert list(pairs.columns) == ["path", "filename", "patient_id", "finding", "view"]
    assert pairs.values.tolist() == [
        ["images/lung-a.jpg", "lung-a.jpg", "ieee-300", "COVID-19", "PA"],
        ["images/lung-b.png", "lung-b.png", "ieee-300", "COVID-19, ARDS", "AP Supine"],
        ["images/gone.jpg", "gone.jpg", "ieee-303", "COVID-19", "AP"],
    ]


def test_build_lungs_covid_converts_masks_like_the_reference_copy(fd, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    big = lung_mask((1030, 600))
    big.putpixel((604, 403), 255)  # a speck where nearest samples (300, 200): gone after bilinear + threshold
    big.save(masks / "big.jpg", format="PNG")  # a PNG under its image's name
    lung_mask((40, 30)).save(masks / "small.png")
    lung_mask((40, 20)).save(masks / "odd.jpg", format="PNG")
    images = {
        "images/big.jpg": save(tmp_path / "src" / "big.jpg", (1030, 600)),
        "images/small.png": save(tmp_path / "src" / "small.png", (40, 30), mode="I;16", color=4000),
        "images/odd.jpg": save(tmp_path / "src" / "odd.jpg", (30, 20)),
    }
    pairs = pd.DataFrame(
        [
            [f"images/{n}", n, "ieee-1", "COVID-19", "PA"]
            for n in ["big.jpg", "small.png", "odd.jpg", "gone.jpg"]
        ],
        columns=["path", "filename", "patient_id", "finding", "view"],
    )
    out = tmp_path / "out"
    table = fd.build_lungs_covid(pairs, images, masks, out)

    assert "the mask of odd.jpg is (40, 20), its image (30, 20): skipped" in capsys.readouterr().err
    assert list(table.columns) == LUNGS_COVID_HEADER
    assert table[["image", "mask", "original_name"]].values.tolist() == [
        ["images/big.png", "masks/big.png", "big.jpg"],
        ["images/small.png", "masks/small.png", "small.png"],
    ]
    assert set(table["source"]) == {"ieee8023/covid-chestxray-dataset"}
    for row in table.itertuples():
        with Image.open(out / row.image) as image, Image.open(out / row.mask) as mask:
            assert image.mode == mask.mode == "L" and image.size == mask.size
            assert set(mask.tobytes()) == {0, 255}
    with Image.open(out / "masks/small.png") as mask:  # not resized: the 127 rim is background
        assert mask.size == (40, 30)
        assert mask.getpixel((5, 3)) == 0 and mask.getpixel((7, 15)) == 255
    with Image.open(out / "masks/big.png") as mask:  # resized to 512 x 298 like its image
        assert mask.size == (512, 298)
        assert [mask.getpixel(xy) for xy in ((64, 37), (128, 149), (400, 149), (300, 200))] == [0, 255, 0, 0]


def test_smooth_mask_resize_thresholds_after_bilinear(fd, tmp_path):
    """The reference copy's masks are the drawing resized bilinearly, then cut at half: a lone lung pixel
    where nearest samples a 4x downscale disappears, while lungs/ (binarize, then nearest) keeps it."""
    drawing = Image.new("L", (8, 8), 0)
    drawing.putpixel((2, 2), 255)
    drawing.paste(255, (4, 4, 8, 8))
    drawing.save(tmp_path / "m.png")
    fraction = fd.convert_mask(tmp_path / "m.png", tmp_path / "smooth.png", (2, 2), smooth=True)
    with Image.open(tmp_path / "smooth.png") as mask:
        assert list(mask.tobytes()) == [0, 0, 0, 255] and fraction == 0.25
    fd.convert_mask(tmp_path / "m.png", tmp_path / "nearest.png", (2, 2))
    with Image.open(tmp_path / "nearest.png") as mask:
        assert list(mask.tobytes()) == [255, 0, 0, 255]


def test_wheel_url_and_masks_from_the_wheel(fd, tmp_path):
    from fetch_sets import lungs_covid as lc

    listing = tmp_path / "release.json"
    listing.write_text(json.dumps({"urls": [
        {"filename": "torchxrayvision-1.5.7.tar.gz", "url": "https://x/sdist"},
        {"filename": lc.TXV_WHEEL, "url": "https://x/wheel"},
    ]}))  # fmt: skip
    assert lc.wheel_url(listing) == "https://x/wheel"
    listing.write_text(json.dumps({"urls": []}))
    with pytest.raises(fd.FetchError, match=r"pip download torchxrayvision==1\.5\.7 --no-deps"):
        lc.wheel_url(listing)

    downloads = tmp_path / "downloads"  # a wheel from `pip download` is used as it is: nothing fetched
    fake_wheel(downloads / lc.TXV_WHEEL, {"a.jpg": lung_mask((10, 10)), "b.PNG": lung_mask((9, 9))})

    def no_fetch(url: str, dest: Path) -> Path:
        raise AssertionError(url)

    folder = lc.extract_masks(downloads, tmp_path / "work", no_fetch)
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "b.PNG"]


def test_lungs_covid_needs_covid_cxr_first(fd, tmp_path, capsys):
    assert fd.main(["--out", str(tmp_path / "data"), "--only", "lungs-covid"]) == 1
    assert "build covid-cxr first" in capsys.readouterr().err


def test_select_images_of_actualmed(fd, tmp_path, capsys):
    from fetch_sets.common import read_table

    csv = tmp_path / "actualmed.csv"
    csv.write_text(
        ACTUALMED_HEADER + "ANON9,,,,COVID-19,AP,X-ray,c.png,\n"
        "ANON7,,,,No finding,PA,X-ray,n.png,\n"
        "ANON7,,,,COVID-19,PA,X-ray,other.png,\n"
        "ANON8,,,,,PA,X-ray,unsure.png,Inconclusive\n"
    )
    table = read_table(csv, {"patientid", "finding", "view", "imagename"}, "Actualmed")
    selected = fd.select_images(table, ("n.png", "unsure.png", "c.png", "missing.png"))
    assert selected.values.tolist() == [
        ["c.png", "covid", "actualmed-ANON9", "AP"],
        ["n.png", "normal", "actualmed-ANON7", "PA"],
    ]
    err = capsys.readouterr().err
    assert "unsure.png: finding '' in the Actualmed metadata" in err
    assert "missing.png is not in the Actualmed metadata" in err


def fake_downloads(tmp_path: Path) -> dict[str, Path]:
    """What each URL of a full run serves: test_fetch_data's two archives plus lungs-covid and Actualmed."""
    from fetch_sets import actualmed, lungs_covid

    files = tmp_path / "served"
    served = {
        "muhammedtalo/COVID-19/archive/refs/heads/master.zip": zip_tree(
            darkcovidnet_tree(tmp_path / "a").parents[1], tmp_path / "covid.zip"
        ),
        "OpenIST/archive/refs/heads/master.zip": zip_tree(
            openist_tree(tmp_path / "b").parents[2], tmp_path / "lungs.zip"
        ),
    }
    ieee = files / "ieee.csv"
    ieee.parent.mkdir(parents=True)
    ieee.write_text(IEEE_CSV + MORE_IEEE_ROWS)
    served["covid-chestxray-dataset/master/metadata.csv"] = ieee
    sizes = {"lung-a.jpg": (70, 50), "lung-b.png": (600, 300), "lateral.jpg": (50, 70), "sars.jpg": (50, 50)}
    for name, size in sizes.items():
        served[f"covid-chestxray-dataset/master/images/{name}"] = save(files / name, size)
    served["covid-chestxray-dataset/master/images/odd-size.jpg"] = save(files / "odd-size.jpg", (30, 20))
    masks = {name: lung_mask(size) for name, size in sizes.items()}
    masks["gone.jpg"], masks["odd-size.jpg"] = lung_mask((50, 50)), lung_mask((40, 20))
    masks["a-case.jpeg"] = lung_mask((1030, 600))  # covid-cxr's patient 46: left out
    wheel = fake_wheel(files / lungs_covid.TXV_WHEEL, masks)
    listing = files / "release.json"
    listing.write_text(
        json.dumps({"urls": [{"filename": wheel.name, "url": "https://files.example/txv.whl"}]})
    )
    served["pypi/torchxrayvision/1.5.7/json"] = listing
    served["files.example/txv.whl"] = wheel

    normal, covid = actualmed.SELECTION[0], actualmed.SELECTION[1]
    am = files / "actualmed.csv"
    am.write_text(
        ACTUALMED_HEADER + f"ANON91,,,,No finding,AP,X-ray,{normal},\n"
        f"ANON170,,,,COVID-19,AP,X-ray,{covid},\n"
        "ANON45,,,,COVID-19,AP,X-ray,not-selected.png,\n"
    )
    served["Actualmed-COVID-chestxray-dataset/master/metadata.csv"] = am
    for name, size in ((normal, (2496, 1971)), (covid, (300, 200))):
        src = save(files / "am" / name, size, mode="I;16", color=30000)
        served[f"Actualmed-COVID-chestxray-dataset/master/images/{name}"] = src
    return served


def test_main_builds_all_four_sets_from_fake_downloads(fd, tmp_path, capsys):
    from fetch_sets import actualmed

    served = fake_downloads(tmp_path)
    calls = []

    def fake_fetch(url: str, dest: Path) -> Path:
        calls.append(url)
        hits = [src for key, src in served.items() if url.endswith(key)]
        if not hits:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(hits[0], dest))

    out, keep = tmp_path / "data", tmp_path / "keep"
    # Named in any order, covid-cxr is built before lungs-covid (which leaves out its patients).
    only = ["--only", "external-actualmed", "lungs-covid", "covid-cxr"]
    assert fd.main(["--out", str(out), "--keep-downloads", str(keep), *only], fetch=fake_fetch) == 0
    err = capsys.readouterr().err
    assert "images/gone.jpg is not in github ieee8023/covid-chestxray-dataset (HTTP 404); skipped." in err
    assert "the mask of odd-size.jpg is (40, 20), its image (30, 20): skipped" in err
    assert "lungs-covid: got {'pairs': 2, 'patients': 1}, the reference copy has" in err
    assert not (out / "lungs").exists()

    lungs_covid = pd.read_csv(out / "lungs-covid" / "metadata.csv", dtype=str)
    assert list(lungs_covid.columns) == LUNGS_COVID_HEADER
    assert lungs_covid[["original_name", "patient_id", "finding", "view"]].values.tolist() == [
        ["lung-a.jpg", "ieee-300", "COVID-19", "PA"],
        ["lung-b.png", "ieee-300", "COVID-19, ARDS", "AP Supine"],
    ]
    with (
        Image.open(out / "lungs-covid/images/lung-b.png") as image,
        Image.open(out / "lungs-covid/masks/lung-b.png") as mask,
    ):
        assert image.size == mask.size == (512, 256)

    external = pd.read_csv(out / "external-actualmed" / "metadata.csv")
    assert list(external.columns) == fd.COVID_COLUMNS
    normal = external.iloc[0]
    stem = Path(actualmed.SELECTION[0]).stem
    assert (normal.path, normal.label, normal.patient_id, normal.source, normal.view) == (
        f"images/normal/{stem}.png",
        "normal",
        "actualmed-ANON91",
        "Actualmed (agchung)",
        "AP",
    )
    assert (normal.original_width, normal.original_height) == (2496, 1971)
    assert external["label"].tolist() == ["normal", "covid"]
    with Image.open(out / "external-actualmed" / normal.path) as image:
        assert (image.mode, image.size) == ("L", (512, 404))
    assert not any("not-selected" in url for url in calls)
    assert sorted(p.name for p in keep.iterdir()) == [
        "actualmed",
        "actualmed-metadata.csv",
        "darkcovidnet.zip",
        "ieee8023",
        "ieee8023-metadata.csv",
        "torchxrayvision-1.5.7-py3-none-any.whl",
        "torchxrayvision-1.5.7.json",
    ]

    calls.clear()  # rebuilt from the kept downloads: only the image that upstream lacks is asked for again
    again = ["--out", str(out), "--keep-downloads", str(keep), "--force", *only]
    assert fd.main(again, fetch=fake_fetch) == 0
    assert [url.split("/")[-3] for url in calls] == ["master", "main"]
    assert all(url.endswith("/images/gone.jpg") for url in calls)
    assert len(pd.read_csv(out / "lungs-covid" / "metadata.csv")) == 2


def test_image_downloads_stop_on_other_errors_and_on_escaping_paths(fd, tmp_path):
    from fetch_sets.common import download_repo_files

    def server_error(url: str, dest: Path) -> Path:
        raise urllib.error.HTTPError(url, 500, "Server Error", None, None)

    with pytest.raises(fd.FetchError, match=r"images/x\.png \(HTTP 500\)"):
        download_repo_files("o/r", ["images/x.png"], tmp_path, server_error)
    with pytest.raises(fd.FetchError, match="points outside the repository"):
        download_repo_files("o/r", ["images/../../x.png"], tmp_path, server_error)
