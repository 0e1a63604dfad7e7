"""data.external: other hospitals' sets are checked before training, with the option and folder named."""

from __future__ import annotations

import re

import pytest

from covidseg.data.datamodule import CXRDataModule
from covidseg.errors import UserError
from tests.conftest import make_dataset


@pytest.fixture
def internal(tmp_path):
    return make_dataset(tmp_path / "internal", {"normal": 40, "covid": 40}, size=40)


def setup_with(internal, tmp_path, external):
    dm = CXRDataModule(str(internal), image_size=32, cache_dir=str(tmp_path / "cache"), external=external)
    dm.setup("fit")
    return dm


def test_a_valid_external_set_passes_and_is_kept(internal, tmp_path):
    other = make_dataset(tmp_path / "hospital_b", {"covid": 4}, size=40)  # one class is enough
    assert setup_with(internal, tmp_path, [str(other)]).external == [other]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t / "missing", r"data.external\[0\] \(.*missing\): Dataset folder .* does not exist"),
        (
            lambda t: (t / "empty").mkdir() or t / "empty",
            r"data.external\[0\] \(.*empty\): .*no metadata.csv",
        ),
        (
            lambda t: make_dataset(t / "tb_only", {"tb": 4}, size=40),
            r"data.external\[0\] \(.*tb_only\): .*no image has label \['normal', 'covid'\]",
        ),
    ],
    ids=["missing", "empty", "no-class-of-ours"],
)
def test_a_bad_external_folder_stops_before_training(internal, tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        setup_with(internal, tmp_path, [str(make(tmp_path))])


def test_two_external_folders_with_one_name_are_refused(internal, tmp_path):
    a = make_dataset(tmp_path / "a" / "site", {"covid": 4}, size=40)
    b = make_dataset(tmp_path / "b" / "site", {"covid": 4}, size=40)
    with pytest.raises(UserError, match=r"data.external\[1\] .*same name"):
        setup_with(internal, tmp_path, [str(a), str(b)])


def test_the_training_data_is_not_an_external_set(internal, tmp_path):
    with pytest.raises(UserError, match=r"shares 80 image file\(s\) with data.root"):
        setup_with(internal, tmp_path, [str(internal)])


def test_the_cli_stops_with_exit_2_before_training(internal, tmp_path, cli_refused):
    cli_refused(
        "covidseg-train",
        f"data.root={internal}",
        f"data.external=[{tmp_path}/nowhere]",
        "debug=fast",
        f"hydra.run.dir={tmp_path}/run",
        expected=re.escape("data.external[0]"),
    )
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
