"""Offline tests of scripts/fetch_data.py on tiny fake archives (no network, a second or so)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch_data.py"


@pytest.fixture(scope="module")
def fd():
    """The script as a module, loaded from its path (it is not part of the covidseg package)."""
    spec = importlib.util.spec_from_file_location("fetch_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_data"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fetch_data", None)


def save(path: Path, size: tuple[int, int], mode: str = "RGB", color=(90, 90, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


IEEE_CSV = (
    "patientid,offset,sex,age,finding,view,filename\n"
    "46,0,M,60,COVID-19,PA,a-case.jpeg\n"
    "46,3,M,60,COVID-19,AP Supine,b-case.png\n"
    "7,,F,,ARDS,PA,unrelated.png\n"
)


def darkcovidnet_tree(root: Path) -> Path:
    """Mimics COVID-19-master/X-Ray Image DataSet/{Covid-19,No_findings,Pneumonia}/ of the zip."""
    base = root / "COVID-19-master" / "X-Ray Image DataSet"
    save(base / "Covid-19" / "a-case.jpeg", (1030, 600))  # RGB, resized to 512 x 298
    save(base / "Covid-19" / "b-case.png", (40, 30), mode="RGBA", color=(200, 200, 200, 255))
    save(base / "Covid-19" / "unknown-figure.png", (20, 20), mode="L", color=50)
    (base / "Covid-19" / ".DS_Store").write_bytes(b"junk")
    save(base / "No_findings" / "00000013_005.png", (64, 64), mode="L", color=10)
    save(base / "No_findings" / "00000013_006.png", (64, 64), mode="L", color=10)
    save(base / "Pneumonia" / "00000099_000.png", (32, 48), mode="L", color=200)
    (root / "COVID-19-master" / "DarkCovidNet.ipynb").write_text("{}")
    return base


def openist_tree(root: Path) -> Path:
    """Mimics OpenIST-master/Datasets/Chest_x-ray/: <name>.jpg images beside <name>@.png masks."""
    base = root / "OpenIST-master" / "Datasets" / "Chest_x-ray"
    save(base / "1-10-500-500-100.jpg", (50, 40))
    mask = Image.new("RGB", (50, 40), (0, 0, 0))
    mask.paste((255, 255, 255), (5, 5, 20, 35))  # white lung on black
    mask.save(base / "1-10-500-500-100@.png")
    save(base / "201-210-500-500-100 (31).jpg", (30, 20))  # numbered copy as the only image
    Image.new("L", (30, 20), 1).save(base / "201-210-500-500-100@.png")  # a 0/1 mask
    save(base / "7-16-500-500-100.jpg", (50, 40))  # image without mask: not in the set
    save(base / "9-18-500-500-100@.png", (50, 40), mode="L", color=0)  # mask without image
    return base


def test_target_size_matches_reference_copy(fd):
    assert fd.target_size(1793, 1307) == (512, 373)
    assert fd.target_size(1605, 1544) == (512, 493)
    assert fd.target_size(1024, 1024) == (512, 512)
    assert fd.target_size(500, 417) == (500, 417)


def test_to_gray8_rescales_16_bit_and_flattens_alpha(fd):
    deep = Image.new("I;16", (2, 1))
    deep.putpixel((0, 0), 0)
    deep.putpixel((1, 0), 65535)
    assert fd.to_gray8(deep).mode == "L"
    assert list(fd.to_gray8(deep).tobytes()) == [0, 255]
    clear = Image.new("RGBA", (1, 1), (255, 255, 255, 0))
    assert fd.to_gray8(clear).getpixel((0, 0)) == 0


def test_patient_ids(fd, tmp_path, capsys):
    csv = tmp_path / "meta.csv"
    csv.write_text(" Patientid ,view,filename\n46,PA,X.jpeg\n")  # old header spelling
    ieee = fd.read_ieee_metadata(csv)
    assert fd.covid_patient("X.jpeg", ieee) == ("ieee-46", "PA")
    assert fd.covid_patient("x.JPEG", ieee) == ("ieee-46", "PA")
    assert fd.covid_patient("fig.pdf-001-c.png", ieee) == ("ieee-file-fig.pdf-001-c", "")
    assert "not in the ieee8023 metadata" in capsys.readouterr().err
    assert fd.nih_patient("00000013_005.png") == "nih-00000013"


def test_build_covid_cxr(fd, tmp_path):
    base = darkcovidnet_tree(tmp_path / "src")
    csv = tmp_path / "ieee.csv"
    csv.write_text(IEEE_CSV)
    out = tmp_path / "out"
    table = fd.build_covid_cxr(base, fd.read_ieee_metadata(csv), out)

    assert list(table.columns) == fd.COVID_COLUMNS
    assert list(table["path"]) == sorted(table["path"])
    rows = table.set_index("original_name")
    a = rows.loc["a-case.jpeg"]
    assert (a.path, a.label, a.patient_id, a.source, a.view) == (
        "images/covid/a-case.png",
        "covid",
        "ieee-46",
        "ieee8023/covid-chestxray-dataset",
        "PA",
    )
    assert (a.original_width, a.original_height) == (1030, 600)
    assert rows.loc["b-case.png", "view"] == "AP Supine"
    assert rows.loc["unknown-figure.png", "patient_id"] == "ieee-file-unknown-figure"
    nih = rows.loc["00000013_005.png"]
    assert (nih.label, nih.patient_id, nih.source, nih.view) == (
        "normal",
        "nih-00000013",
        "NIH ChestX-ray8",
        "PA/AP",
    )
    assert rows.loc["00000099_000.png", "label"] == "pneumonia"
    assert len(table) == 6  # .DS_Store ignored

    with Image.open(out / "images/covid/a-case.png") as image:
        assert (image.mode, image.size, image.format) == ("L", (512, 298), "PNG")
    with Image.open(out / "images/pneumonia/00000099_000.png") as image:
        assert (image.mode, image.size) == ("L", (32, 48))


def test_build_lungs_pairs_by_at_suffix(fd, tmp_path, capsys):
    base = openist_tree(tmp_path / "src")
    out = tmp_path / "out"
    table = fd.build_lungs(base, out)

    assert table.to_dict("records") == [
        {"image": "images/1-10-500-500-100.png", "mask": "masks/1-10-500-500-100.png"},
        {"image": "images/201-210-500-500-100.png", "mask": "masks/201-210-500-500-100.png"},
    ]
    assert "9-18-500-500-100@.png has no image" in capsys.readouterr().err
    for row in table.itertuples():
        with Image.open(out / row.image) as image, Image.open(out / row.mask) as mask:
            assert image.mode == mask.mode == "L"
            assert image.size == mask.size
            assert set(mask.tobytes()) <= {0, 255}
    with Image.open(out / "masks/1-10-500-500-100.png") as mask:
        assert mask.getpixel((10, 10)) == 255 and mask.getpixel((40, 5)) == 0
    with Image.open(out / "masks/201-210-500-500-100.png") as mask:
        assert set(mask.tobytes()) == {255}  # 0/1 input binarized to 255


def zip_tree(root: Path, dest: Path) -> Path:
    return Path(shutil.make_archive(str(dest.with_suffix("")), "zip", root))


def test_main_end_to_end_with_fake_downloads(fd, tmp_path):
    covid_zip = zip_tree(darkcovidnet_tree(tmp_path / "a").parents[1], tmp_path / "covid.zip")
    lungs_zip = zip_tree(openist_tree(tmp_path / "b").parents[2], tmp_path / "lungs.zip")
    ieee = tmp_path / "ieee.csv"
    ieee.write_text(IEEE_CSV)
    calls = []

    def fake_fetch(url: str, dest: Path) -> Path:
        calls.append(url)
        if url.endswith("/master.zip"):  # both repositories are on master
            src = covid_zip if "muhammedtalo" in url else lungs_zip
        elif url.endswith("/master/metadata.csv"):
            src = ieee
        else:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        return dest

    out, keep = tmp_path / "data", tmp_path / "keep"
    only = ["--only", "covid-cxr", "lungs"]  # test_fetch_more_data.py builds all four
    assert fd.main(["--out", str(out), "--keep-downloads", str(keep), *only], fetch=fake_fetch) == 0
    covid = pd.read_csv(out / "covid-cxr" / "metadata.csv")
    assert list(covid.columns) == fd.COVID_COLUMNS and len(covid) == 6
    lungs = pd.read_csv(out / "lungs" / "metadata.csv")
    assert list(lungs.columns) == ["image", "mask"] and len(lungs) == 2
    assert all((out / "lungs" / p).is_file() for p in lungs["mask"])
    assert not list(out.glob(".*partial"))
    assert sorted(p.name for p in keep.iterdir()) == [
        "darkcovidnet.zip",
        "ieee8023-metadata.csv",
        "openist.zip",
    ]

    calls.clear()  # a second run skips both sets; --force rebuilds from the kept downloads
    assert fd.main(["--out", str(out), *only], fetch=fake_fetch) == 0
    assert calls == []
    assert (
        fd.main(
            ["--out", str(out), "--only", "lungs", "--force", "--keep-downloads", str(keep)], fetch=fake_fetch
        )
        == 0
    )
    assert calls == []
    assert len(pd.read_csv(out / "lungs" / "metadata.csv")) == 2


def test_network_failure_names_the_url(fd, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert fd.main(["--out", str(tmp_path / "data"), "--only", "lungs"]) == 1
    err = capsys.readouterr().err
    assert "https://github.com/pi-null-mezon/OpenIST/archive/refs/heads/master.zip" in err
    assert "--keep-downloads" in err
    assert not (tmp_path / "data" / "lungs" / "metadata.csv").exists()


def test_missing_branch_tries_main_then_explains(fd, tmp_path):
    def not_found(url: str, dest: Path) -> Path:
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)

    with pytest.raises(fd.FetchError, match=r"master\.zip \(HTTP 404\).*main\.zip \(HTTP 404\)"):
        fd.download_first(fd.archive_urls("x/y"), tmp_path / "y.zip", not_found)
