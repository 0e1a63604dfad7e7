"""Stage 1: post-processing, masking arithmetic, the mask cache, and real tiny trainings."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidseg.checkpoints import read_checkpoint
from covidseg.data.transforms import apply_masks, lung_box
from covidseg.errors import UserError
from covidseg.masks import MaskSource
from covidseg.models.segmenter import dice_iou, postprocess
from tests.conftest import read_metrics


def two_lungs_with_specks() -> np.ndarray:
    prob = np.zeros((40, 40), np.float32)
    prob[5:35, 4:16] = 0.9  # left lung
    prob[5:35, 24:36] = 0.8  # right lung
    prob[15:20, 8:12] = 0.1  # a hole (opacity) inside the left lung
    prob[1:3, 19:21] = 0.95  # a speck between/above the lungs
    prob[37:39, 37:39] = 0.7  # a speck in the corner
    return prob


def test_postprocess_keeps_two_blobs_fills_holes_drops_specks():
    mask = postprocess(two_lungs_with_specks(), threshold=0.5, keep_components=2, fill_holes=True)
    expected = np.zeros((40, 40), np.uint8)
    expected[5:35, 4:16] = 1
    expected[5:35, 24:36] = 1
    np.testing.assert_array_equal(mask, expected)


def test_postprocess_options_can_be_turned_off_and_dilation_grows():
    raw = postprocess(two_lungs_with_specks(), keep_components=0, fill_holes=False)
    assert raw[1, 19] == 1 and raw[16, 9] == 0  # speck kept, hole kept
    grown = postprocess(two_lungs_with_specks(), dilate_px=2)
    plain = postprocess(two_lungs_with_specks())
    assert grown.sum() > plain.sum() and (grown >= plain).all()
    assert grown[5, 2] == 1 and grown[5, 1] == 0  # grown by exactly 2 px to the left


def test_dice_iou():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[:2] = 1  # 8 pixels
    b[1:3] = 1  # 8 pixels, 4 shared
    assert dice_iou(a, b) == pytest.approx((0.5, 1 / 3))
    assert dice_iou(a, a) == (1.0, 1.0)


def test_segmented_is_zero_outside_and_unchanged_inside_and_lungs_removed_is_the_complement():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (3, 16, 16), dtype=np.uint8)
    masks = (rng.random((3, 16, 16)) > 0.5).astype(np.uint8)
    segmented = apply_masks(images, masks, "segmented")
    removed = apply_masks(images, masks, "lungs_removed")
    inside = masks.astype(bool)
    assert (segmented[~inside] == 0).all() and (segmented[inside] == images[inside]).all()
    assert (removed[inside] == 0).all() and (removed[~inside] == images[~inside]).all()
    np.testing.assert_array_equal(segmented + removed, images)


def test_crop_to_lungs_uses_the_box_with_margin():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 4:12] = 1
    assert lung_box(mask, 0.0) == (5, 10, 4, 12)
    assert lung_box(mask, 0.1) == (3, 12, 2, 14)
    assert lung_box(np.zeros((8, 8), np.uint8), 0.1) == (0, 8, 0, 8)
    image = np.full((1, 20, 20), 200, np.uint8)
    cropped = apply_masks(image, mask[None], "segmented", crop_to_lungs=True, crop_margin=0.0, out_size=10)
    assert cropped.shape == (1, 10, 10) and (cropped == 200).all()  # the crop is all lung


@pytest.mark.slow
def test_tiny_segmenter_training_meets_the_contract(tiny_segmenter):
    for name in ["checkpoints/best.ckpt", "metrics.json", "overlays.png"]:
        assert (tiny_segmenter / name).is_file(), name
    metrics = read_metrics(tiny_segmenter)
    assert 0.0 <= metrics["test/dice"] <= 1.0 and 0.0 <= metrics["test/iou"] <= metrics["test/dice"]
    assert metrics["arch"] == "Unet" and metrics["encoder"] == "tu-test_resnet"
    assert metrics["n_train"] > metrics["n_test"] > 0
    with Image.open(tiny_segmenter / "overlays.png") as image:
        assert image.size[0] > 100


@pytest.mark.slow
def test_eval_segmenter_on_a_mask_set(tiny_segmenter, lungs, tmp_path, cli):
    subset = tmp_path / "masks"
    subset.mkdir()
    table = pd.read_csv(lungs / "metadata.csv").head(5)
    table.assign(
        image=[str(lungs / p) for p in table["image"]], mask=[str(lungs / p) for p in table["mask"]]
    ).to_csv(subset / "metadata.csv", index=False)
    out = tmp_path / "eval"
    cli(
        "covidseg-eval-segmenter",
        f"ckpt_path={tiny_segmenter}/checkpoints/best.ckpt",
        f"data.root={subset}",
        "overlays=4",
        f"hydra.run.dir={out}",
    )
    metrics = read_metrics(out)
    assert metrics["n_test"] == 5 and 0.0 <= metrics["test/dice"] <= 1.0
    assert (out / "overlays.png").is_file()


class CountingMaskSource(MaskSource):
    calls = 0

    def _predict(self, files):
        type(self).calls += 1
        return super()._predict(files)


class InterruptedMaskSource(MaskSource):
    """Stage 1 killed after its first batch of predictions."""

    def _predict(self, files):
        if self.network_calls:
            raise KeyboardInterrupt
        return super()._predict(files)


@pytest.mark.slow
def test_masks_predicted_before_an_interruption_are_kept(tiny_segmenter, covid_cxr, tmp_path):
    files = [str(covid_cxr / p) for p in pd.read_csv(covid_cxr / "metadata.csv")["path"].iloc[:6]]
    ckpt = tiny_segmenter / "checkpoints" / "best.ckpt"
    with pytest.raises(KeyboardInterrupt):
        InterruptedMaskSource(ckpt, tmp_path / "cache", batch_size=4).masks_for(files)
    resumed = MaskSource(ckpt, tmp_path / "cache", batch_size=4)
    resumed.masks_for(files)
    assert resumed.hits == 4 and resumed.misses == 2 and resumed.network_calls == 1


@pytest.mark.slow
def test_mask_cache_second_pass_runs_no_network_and_new_checkpoint_misses(
    tiny_segmenter, covid_cxr, tmp_path
):
    files = [str(covid_cxr / p) for p in pd.read_csv(covid_cxr / "metadata.csv")["path"].iloc[:6]]
    ckpt = tiny_segmenter / "checkpoints" / "best.ckpt"
    first = CountingMaskSource(ckpt, tmp_path / "cache")
    masks = first.masks_for(files, size=32)
    assert masks.shape == (6, 32, 32) and first.network_calls == 1 and first.misses == 6
    second = CountingMaskSource(ckpt, tmp_path / "cache")
    again = second.masks_for(files, size=32)
    assert second.network_calls == 0 and second.hits == 6
    np.testing.assert_array_equal(masks, again)
    other_settings = CountingMaskSource(ckpt, tmp_path / "cache", postprocess={"threshold": 0.3})
    other_settings.masks_for(files)
    assert other_settings.misses == 6
    changed = tmp_path / "changed.ckpt"
    changed.write_bytes(ckpt.read_bytes() + b"\0")  # same weights, different file content
    third = CountingMaskSource(changed, tmp_path / "cache")
    third.masks_for(files)
    assert third.misses == 6 and third.network_calls == 1


@pytest.mark.slow
def test_classifier_trains_on_segmented_input_and_predicts_with_its_segmenter(
    tiny_segmenter, covid_cxr, tmp_path, cli
):
    run = tmp_path / "run"
    cli(
        "covidseg-train",
        "data.input=segmented",
        "data.limit=40",
        "data.image_size=48",
        "trainer.max_epochs=1",
        "logger=csv",
        f"segmenter.ckpt_path={tiny_segmenter}/checkpoints/best.ckpt",
        f"hydra.run.dir={run}",
    )
    metrics = read_metrics(run)
    assert metrics["input"] == "segmented" and metrics["segmenter_sha1"]
    assert (
        metrics["mask_cache_misses"] + metrics["mask_cache_hits"]
        == metrics["n_train"] + metrics["n_val"] + metrics["n_test"]
    )
    stats = pd.read_csv(run / "mask_stats.csv")
    assert len(stats) == metrics["n_train"] + metrics["n_val"] + metrics["n_test"]
    assert stats["lung_area_fraction"].between(0, 1).all() and (run / "masks_overview.png").is_file()
    # covidseg-predict brings the recorded segmenter along (checked by SHA-1) and shows the lung masks
    best = run / "checkpoints" / "best.ckpt"
    record = read_checkpoint(best, "")["hyper_parameters"]["data_config"]["segmenter"]
    assert record["sha1"] == metrics["segmenter_sha1"]
    images = pd.read_csv(covid_cxr / "metadata.csv")["path"].iloc[:3]
    (tmp_path / "new.csv").write_text("path\n" + "\n".join(str(covid_cxr / p) for p in images) + "\n")
    out = tmp_path / "predict"
    cli(
        "covidseg-predict",
        f"ckpt_path={best}",
        f"inputs={tmp_path}/new.csv",
        "cam=true",
        f"hydra.run.dir={out}",
    )
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["prob_covid"].between(0, 1).all() and predictions["error"].isna().all()
    assert len(list((out / "cam").glob("*.png"))) == 3


def test_missing_segmenter_checkpoint_says_how_to_make_one(tmp_path, cli_refused):
    with pytest.raises(UserError, match="make segmenter"):
        MaskSource(tmp_path / "none.ckpt", tmp_path)
    cli_refused(
        "covidseg-train",
        "data.input=segmented",
        f"segmenter.ckpt_path={tmp_path}/none.ckpt",
        "debug=fast",
        f"hydra.run.dir={tmp_path}/r",
        expected="make segmenter",
    )
