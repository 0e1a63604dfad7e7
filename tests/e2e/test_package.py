"""The package installs anywhere: configs ship inside it, and no default location depends on where it lies.

The slow tests build a wheel from this repository, install it into a folder of its own and run the
installed console scripts from a temporary folder outside the repository, as a user of `pip install .` would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import covidseg.paths as paths
from covidseg.data.manifest import load_manifest
from covidseg.errors import UserError
from tests.conftest import REPO, make_dataset


def _as_installed(monkeypatch, folder: Path) -> Path:
    """Pretend covidseg was imported from `folder`/covidseg (no data folder set by the environment)."""
    monkeypatch.delenv("COVIDSEG_DATA_DIR", raising=False)
    monkeypatch.setattr(paths, "PACKAGE_DIR", folder / "covidseg")
    (folder / "covidseg").mkdir(parents=True, exist_ok=True)
    return folder


def test_configs_live_at_the_top_and_ship_inside_the_package():
    """The user's layout: conf/ at the top of the repository (one copy), mapped into the wheel as
    covidseg/conf (pyproject.toml); a checkout reads it in place."""
    assert paths.CONF_DIR == REPO / "conf"
    assert (paths.CONF_DIR / "train.yaml").is_file() and (
        paths.CONF_DIR / "data" / "covid_cxr.yaml"
    ).is_file()
    assert not (REPO / "covidseg" / "conf").exists(), "one copy of the configs: conf/ at the top"
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert (
        setuptools["package-dir"] == {"covidseg.conf": "conf"} and "covidseg.conf" in setuptools["packages"]
    )


def test_data_folder_comes_from_the_environment_first(monkeypatch, tmp_path):
    monkeypatch.setenv("COVIDSEG_DATA_DIR", str(tmp_path / "mine"))
    assert paths.data_dir() == tmp_path / "mine"
    assert "COVIDSEG_DATA_DIR" in paths.data_dir_origin()


def test_data_folder_beside_a_source_checkout(monkeypatch, tmp_path):
    checkout = _as_installed(monkeypatch, tmp_path / "repo")
    (checkout / "pyproject.toml").write_text('[project]\nname = "covidseg"\nversion = "0"\n')
    assert paths.source_checkout() == checkout
    assert paths.data_dir() == tmp_path / "shared" / "data"


def test_installed_package_looks_for_data_in_the_current_folder(monkeypatch, tmp_path):
    site = _as_installed(monkeypatch, tmp_path / "site-packages")
    # Another project's pyproject.toml beside the package does not make it a checkout of covidseg.
    (site / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    monkeypatch.chdir(tmp_path)
    assert paths.source_checkout() is None
    assert paths.data_dir() == tmp_path / "data"


def test_missing_default_data_folder_says_where_it_looked_and_how_to_fix(monkeypatch, tmp_path):
    _as_installed(monkeypatch, tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_manifest(paths.data_dir() / "covid-cxr")
    message = str(err.value)
    assert "\n" not in message
    for part in ("COVIDSEG_DATA_DIR", "data.root=", str(tmp_path / "data"), "current directory"):
        assert part in message, message


# ---- a wheel built from the repository, installed outside it -----------------------------------------


def _copy_source(dest: Path) -> Path:
    """What `pip install .` reads, copied so that building leaves no build/ or egg-info in the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for folder in ("covidseg", "conf"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _pip(*args: str) -> None:
    # Offline: the build uses this environment's setuptools, and nothing is fetched.
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    _pip(
        "wheel",
        str(_copy_source(base / "src")),
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(base / "dist"),
    )
    (built,) = (base / "dist").glob("covidseg-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (its dependencies come from this environment)."""
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--target", str(target), str(wheel))
    return target


def _run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run an installed console script (or python) with only the installed package importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("COVIDSEG_DATA_DIR", "COVIDSEG_LOG_DIR")}
    env["PYTHONPATH"] = str(site)  # replaces a PYTHONPATH pointing at the checkout
    command = [sys.executable, *args[1:]] if args[0] == "python" else [str(site / "bin" / args[0]), *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def _outside_repo(tmp_path: Path) -> Path:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    assert REPO not in cwd.resolve().parents
    return cwd


@pytest.mark.slow
def test_wheel_carries_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"covidseg/conf/{p.relative_to(paths.CONF_DIR).as_posix()}" for p in paths.CONF_DIR.rglob("*.yaml")
    }
    assert len(configs) > 20 and configs <= names, sorted(configs - names)
    assert "covidseg/conf/hydra/launcher/slurm.yaml" in names  # nested two levels down
    assert not any(name.startswith(("tests/", "conf/", "scripts/")) for name in names)


@pytest.mark.slow
def test_installed_wheel_trains_from_a_folder_outside_the_repository(site, tmp_path):
    cwd = _outside_repo(tmp_path)
    make_dataset(cwd / "data" / "covid-cxr", {"normal": 20, "covid": 20})  # the installed default: ./data

    where = _run_installed(
        site,
        cwd,
        "python",
        "-c",
        "import covidseg.paths as p; print(p.__file__, p.source_checkout(), p.data_dir())",
    )
    assert where.returncode == 0, where.stderr
    module, checkout, data = where.stdout.split()
    assert Path(module).is_relative_to(site) and checkout == "None" and Path(data) == cwd / "data"

    result = _run_installed(site, cwd, "covidseg-train", "debug=fast", "data.image_size=32")
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    (run,) = (cwd / "logs" / "train" / "runs").iterdir()  # logs/ under the current folder by default
    assert (run / "metrics.json").is_file()
    # Composed from the installed package's configs, with the data found under ./data.
    assert str(site / "covidseg" / "conf") in (run / ".hydra" / "hydra.yaml").read_text()
    assert str(cwd / "data" / "covid-cxr") in (run / "config_resolved.yaml").read_text()


@pytest.mark.slow
def test_installed_wheel_without_data_names_both_fixes(site, tmp_path):
    cwd = _outside_repo(tmp_path)
    result = _run_installed(site, cwd, "covidseg-train", "debug=fast")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert (
        "COVIDSEG_DATA_DIR" in output and "data.root=" in output and str(cwd / "data" / "covid-cxr") in output
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_installed_entry_points_compose_their_configs_and_the_users(site, tmp_path):
    cwd = _outside_repo(tmp_path)
    result = _run_installed(site, cwd, "covidseg-eval", "--cfg", "job", "ckpt_path=model.ckpt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "task_name: eval" in result.stdout and "ckpt_path: model.ckpt" in result.stdout

    # A user's own experiment configs, in a folder of their own, next to the packaged ones.
    mine = tmp_path / "my_conf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndata:\n  image_size: 48\nmodel:\n  backbone: densenet121\n"
    )
    for how in (["--config-dir", str(mine)], [f"hydra.searchpath=[file://{mine}]"]):
        result = _run_installed(site, cwd, "covidseg-train", *how, "experiment=mine", "--cfg", "job")
        assert result.returncode == 0, f"{how}: {result.stderr[-3000:]}"
        assert "image_size: 48" in result.stdout and "backbone: densenet121" in result.stdout
        assert "max_epochs: 12" in result.stdout  # the packaged defaults still apply
