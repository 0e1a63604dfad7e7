"""A classifier's operating point added to its checkpoint: atomically, CRCs kept, read back by the API."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from covidseg.checkpoints import (
    OPERATING_POINT_KEY,
    load_module,
    operating_point,
    read_checkpoint,
    store_operating_point,
)
from covidseg.checkpoints._read import damaged_record
from covidseg.errors import UserError
from covidseg.models.classifier import Classifier

POINT = {"rule": "youden", "threshold": 0.4375, "positive_class": "covid", "chosen_on": "val", "n_val": 6}


def test_the_point_is_added_by_rename_and_loads_with_the_module(tmp_path):
    model = Classifier(backbone="test_resnet", class_names=["normal", "covid"])
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": "2.6.0",
        "epoch": 1,
    }
    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    torch.save(checkpoint, last)
    os.link(last, best)  # as AtomicCheckpointIO leaves them after an improving last epoch
    assert operating_point(read_checkpoint(best, "")) is None

    store_operating_point(best, POINT)

    assert operating_point(read_checkpoint(best, "")) == POINT
    assert OPERATING_POINT_KEY not in read_checkpoint(last, "")  # the rename parted the two names
    assert os.stat(best).st_ino != os.stat(last).st_ino
    assert damaged_record(best) is None and all(r.CRC for r in zipfile.ZipFile(best).infolist())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]  # no spare, no partial
    loaded = load_module(Classifier, best, "")
    assert loaded.stored_point == POINT and loaded.decision_point() == POINT
    assert load_module(Classifier, last, "").decision_point() == {
        "rule": "fixed",
        "threshold": 0.5,
        "positive_class": "covid",
        "chosen_on": "default",
    }


@pytest.mark.parametrize(
    "stored", [{"threshold": 0.3}, {"rule": "youden", "threshold": float("nan")}, {"rule": "youden"}, 0.5]
)
def test_a_malformed_point_is_refused(stored):
    with pytest.raises(UserError, match="covidseg_operating_point is not a rule with a finite threshold"):
        operating_point({"state_dict": {}, OPERATING_POINT_KEY: stored})
